"""How Bastion implements a catalogue control: the ``bastion harden`` recipe, the gateway
setting (``serve.yaml``) or the command that puts it in place.

Keys are the control ids of ``bastion/risk/catalogue.yaml``. A control the toolkit has no
implementation for maps to nothing (the report then says so rather than inventing one).
Every recipe named here parses with :func:`bastion.defenses.recipes.parse_recipe` and every
setting is a field path of :class:`bastion.serve.settings.ServeSettings`; the tests check
both, so a renamed recipe or setting cannot leave a dead link in a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["harden", "gateway", "command"]


@dataclass(frozen=True)
class Implementation:
    """One way to put a control in place."""

    kind: Kind
    how: str  # the recipe name, the settings path or the command
    example: str  # what a user types or writes
    doc: str  # the docs page that explains it

    @property
    def label(self) -> str:
        return {
            "harden": "bastion harden recipe",
            "gateway": "gateway setting",
            "command": "command",
        }[self.kind]


def _harden(recipe: str) -> Implementation:
    return Implementation(
        "harden", recipe, f"bastion harden --recipe {recipe}", "docs/hardening.md"
    )


def _gateway(path: str, value: str, doc: str = "docs/serving.md") -> Implementation:
    return Implementation("gateway", path, f"serve.yaml: {path}: {value}", doc)


IMPLEMENTATIONS: dict[str, tuple[Implementation, ...]] = {
    "AML.M0003": (_harden("trades"), _harden("pgd_at"), _harden("fast_at")),
    "AML.M0015": (
        Implementation(
            "command", "bastion guard fit", "bastion guard fit --model DIR", "docs/guard.md"
        ),
        _gateway("guard.required", "true", "docs/guard.md"),
    ),
    "AML.M0004": (
        _gateway("rate_limit.requests_per_s", "5"),
        _gateway("rate_limit.samples_per_s", "50"),
    ),
    "AML.M0002": (_gateway("output.mode", "labels"), _gateway("output.round", "2")),
    "bastion:dp-sgd": (_harden("dp_sgd"),),
    "AML.M0007": (_harden("sanitize+standard"),),
    "AML.M0019": (_gateway("auth.enabled", "true"),),
    "AML.M0024": (_gateway("audit.enabled", "true", "docs/audit.md"),),
    "AML.M0014": (
        Implementation(
            "command",
            "bastion attest verify",
            "bastion attest verify attestation.dsse.json",
            "docs/gate.md",
        ),
    ),
}


def implementations(control_id: str) -> tuple[Implementation, ...]:
    """How to put ``control_id`` in place with Bastion (empty when Bastion has no way)."""
    return IMPLEMENTATIONS.get(control_id, ())
