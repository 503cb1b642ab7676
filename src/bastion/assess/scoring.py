"""Severity (0–10) per finding and the overall vulnerability score (0–100).

Severity scales (documented in docs/scoring.md):
- evasion: ``10 × (1 − (robust − chance) / (1 − chance))``, robust accuracy measured over
  *every* evaluation point (a point misclassified when clean is not robust either) and
  ``chance`` the majority-class rate: 0 only for a model that is right on every point under
  attack, 10 for one the attack leaves no better than a constant answer. So a model whose
  "robustness" comes from being wrong anyway, or a hardening that buys it by collapsing
  clean accuracy, scores as the weakness it is.
- other probes define their own in terms of the success of the attack they run, always
  mapping "attack as good as it can be" to 10 and "no better than chance" to 0.

Overall score: per probe take the worst (highest) severity; the score is
``100 × (0.5 · max + 0.5 · mean) / 10`` over those per-probe maxima, so one critical
weakness dominates but breadth still counts. 0 means no probe found anything.
"""

from __future__ import annotations

from collections import defaultdict

from bastion.assess.schema import Finding


def clamp_severity(value: float) -> float:
    return round(min(10.0, max(0.0, float(value))), 2)


def evasion_severity(clean_accuracy: float, robust_accuracy: float, chance: float = 0.0) -> float:
    """See the module docstring; ``clean_accuracy`` only bounds ``robust_accuracy``."""
    if clean_accuracy <= chance or chance >= 1:
        return 10.0
    robust = min(robust_accuracy, clean_accuracy)
    return clamp_severity(10.0 * (1.0 - (robust - chance) / (1.0 - chance)))


def rate_severity(rate: float, chance: float = 0.0) -> float:
    """Map a success rate in [chance, 1] linearly to [0, 10]."""
    if chance >= 1:
        return 0.0
    return clamp_severity(10.0 * (rate - chance) / (1.0 - chance))


def overall_score(findings: list[Finding]) -> float:
    worst: dict[str, float] = defaultdict(float)
    for f in findings:
        worst[f.probe] = max(worst[f.probe], f.severity)
    if not worst:
        return 0.0
    values = list(worst.values())
    return round(100.0 * (0.5 * max(values) + 0.5 * sum(values) / len(values)) / 10.0, 1)
