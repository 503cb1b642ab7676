"""Which risk of the threat catalogue (``bastion/risk/catalogue.yaml``) a finding evidences.

The catalogue's ``evidence`` entries already say which probe (and, for poisoning, which
attack) sets each threat's occurrence; a finding maps to the threat whose evidence names
its probe and attack, else to the one naming its probe alone.
"""

from __future__ import annotations

from bastion.assess.schema import Finding
from bastion.risk.catalogue import Threat, load_catalogue


def risk_for(finding: Finding) -> Threat | None:
    """The catalogue threat ``finding`` is evidence for, or None."""
    by_probe = None
    for threat in load_catalogue().threats:
        ev = threat.evidence
        if ev is None or ev.probe != finding.probe:
            continue
        if ev.attack == finding.attack:
            return threat
        if ev.attack is None and by_probe is None:
            by_probe = threat
    return by_probe
