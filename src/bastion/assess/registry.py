"""Probe registry: names → factories. The threat model chooses among these."""

from __future__ import annotations

from bastion.assess.probe import Probe, ProbeFactory
from bastion.errors import ConfigError


def _evasion() -> Probe:
    from bastion.assess.evasion_probe import EvasionProbe

    return EvasionProbe()


def _poisoning() -> Probe:
    from bastion.assess.poisoning_probe import PoisoningProbe

    return PoisoningProbe()


def _membership() -> Probe:
    from bastion.assess.membership_probe import MembershipProbe

    return MembershipProbe()


def _blackbox() -> Probe:
    from bastion.assess.blackbox_probe import BlackBoxProbe

    return BlackBoxProbe()


def _extraction() -> Probe:
    from bastion.assess.extraction_probe import ExtractionProbe

    return ExtractionProbe()


PROBES: dict[str, ProbeFactory] = {
    "evasion": _evasion,
    "blackbox": _blackbox,
    "extraction": _extraction,
    "poisoning": _poisoning,
    "membership": _membership,
}


def probe_names() -> list[str]:
    return list(PROBES)


def make_probe(name: str) -> Probe:
    if name not in PROBES:
        raise ConfigError(f"unknown probe {name!r}: choose from {', '.join(PROBES)}")
    return PROBES[name]()
