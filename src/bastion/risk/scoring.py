"""Risk scales: FMEA severity × occurrence × detection, the action priority, ISO 31000 5×5.

FMEA (IEC 60812) rates each failure mode on three 1–10 scales:

- **severity** S: how bad the effect is (1 no effect … 10 safety-critical without warning);
- **occurrence** O: how likely the cause is (1 practically impossible … 10 almost certain);
- **detection** D: how likely the failure escapes our controls (1 almost surely detected
  … 10 cannot be detected). High D is bad.

``RPN = S × O × D`` (1–1000). Equal RPNs can hide very different risks (S=10, O=2, D=5 and
S=4, O=5, D=5 both give 100), so the **action priority** follows the AIAG-VDA FMEA
handbook (2019): a lookup over S, O and D bands instead of the product, plus one stricter
Bastion rule: **severity ≥ 9 is always high**, whatever O and D (the handbook lets a very
rare safety-critical cause drop to medium or low; we want a person to sign that off).

ISO 31000 style 5×5 matrix: likelihood ``L = ceil(O / 2)`` and impact ``I = ceil(S / 2)``
(each 1–5); the level of ``L × I`` is low (1–4), medium (5–9), high (10–16) or
critical (20–25).
"""

from __future__ import annotations

import math
from typing import Literal

from bastion.errors import ConfigError

Priority = Literal["high", "medium", "low"]
Level = Literal["low", "medium", "high", "critical"]

LIKELIHOOD_LABELS = ["rare", "unlikely", "possible", "likely", "almost certain"]
IMPACT_LABELS = ["insignificant", "minor", "moderate", "major", "severe"]

# AIAG-VDA action priority: rows are occurrence bands (8–10, 6–7, 4–5, 2–3, 1), columns
# detection bands (7–10, 5–6, 2–4, 1); one table per severity band.
_AP_TABLE: dict[str, list[str]] = {
    "9-10": ["HHHH", "HHHH", "HHHM", "HMLL", "LLLL"],
    "7-8": ["HHHH", "HHHM", "HMMM", "MMLL", "LLLL"],
    "4-6": ["HHMM", "MMML", "MLLL", "LLLL", "LLLL"],
    "2-3": ["MMLL", "LLLL", "LLLL", "LLLL", "LLLL"],
    "1": ["LLLL", "LLLL", "LLLL", "LLLL", "LLLL"],
}
_LETTER: dict[str, Priority] = {"H": "high", "M": "medium", "L": "low"}


def check_scale(name: str, value: int) -> int:
    """Validate a 1–10 FMEA rating."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10:
        raise ConfigError(f"{name} must be an integer from 1 to 10, got {value!r}")
    return value


def rpn(severity: int, occurrence: int, detection: int) -> int:
    """Risk priority number S × O × D (1–1000)."""
    return severity * occurrence * detection


def _severity_band(s: int) -> str:
    if s >= 9:
        return "9-10"
    if s >= 7:
        return "7-8"
    if s >= 4:
        return "4-6"
    if s >= 2:
        return "2-3"
    return "1"


def _occurrence_row(o: int) -> int:
    return 0 if o >= 8 else 1 if o >= 6 else 2 if o >= 4 else 3 if o >= 2 else 4


def _detection_col(d: int) -> int:
    return 0 if d >= 7 else 1 if d >= 5 else 2 if d >= 2 else 3


def handbook_priority(severity: int, occurrence: int, detection: int) -> Priority:
    """The AIAG-VDA table lookup alone (without Bastion's severity ≥ 9 rule)."""
    row = _AP_TABLE[_severity_band(severity)][_occurrence_row(occurrence)]
    return _LETTER[row[_detection_col(detection)]]


def action_priority(severity: int, occurrence: int, detection: int) -> Priority:
    """Action priority: severity ≥ 9 is high; otherwise the AIAG-VDA table."""
    if severity >= 9:
        return "high"
    return handbook_priority(severity, occurrence, detection)


def likelihood(occurrence: int) -> int:
    """ISO 31000 likelihood 1–5 from FMEA occurrence 1–10."""
    return max(1, min(5, math.ceil(occurrence / 2)))


def impact(severity: int) -> int:
    """ISO 31000 impact 1–5 from FMEA severity 1–10."""
    return max(1, min(5, math.ceil(severity / 2)))


def iso_level(likelihood_: int, impact_: int) -> Level:
    """Level of a cell of the 5×5 matrix."""
    score = likelihood_ * impact_
    if score >= 20:
        return "critical"
    if score >= 10:
        return "high"
    if score >= 5:
        return "medium"
    return "low"


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def rate_to_occurrence(rate: float) -> int:
    """Map an attack success rate in [0, 1] linearly onto occurrence 1–10 (half up)."""
    rate = min(1.0, max(0.0, float(rate)))
    return 1 + _half_up(9 * rate)


def tpr_to_occurrence(tpr: float, fpr: float) -> int:
    """Membership inference: occurrence from how far TPR at a low FPR beats chance.

    ``O = 1 + round(3 · log10(TPR / FPR))``, clipped to 1–10: an attack at chance
    (TPR = FPR) gives 1, 10× chance 4, 100× chance 7, 1000× chance 10 (Carlini et al.
    2022, "Membership Inference Attacks From First Principles", argue for exactly this
    low-FPR view)."""
    if fpr <= 0:
        raise ValueError("fpr must be > 0")
    ratio = max(float(tpr), 1e-12) / fpr
    if ratio <= 1:
        return 1
    return max(1, min(10, 1 + _half_up(3 * math.log10(ratio))))


def detection_from_tpr(tpr: float, fpr: float | None = None) -> int:
    """FMEA detection (1 best … 10 undetectable) from a detector's TPR at its calibrated FPR.

    TPR ≥ 0.99 → 1, ≥ 0.95 → 2, ≥ 0.9 → 3, ≥ 0.8 → 4, ≥ 0.7 → 5, ≥ 0.5 → 6, ≥ 0.3 → 7,
    ≥ 0.1 → 8, > 0 → 9, 0 → 10. A detector whose FPR exceeds 5 % counts one step worse:
    its alarms are too many to be acted on."""
    steps = [(0.99, 1), (0.95, 2), (0.9, 3), (0.8, 4), (0.7, 5), (0.5, 6), (0.3, 7), (0.1, 8)]
    d = next((score for floor, score in steps if tpr >= floor), 9 if tpr > 0 else 10)
    if fpr is not None and fpr > 0.05:
        d = min(10, d + 1)
    return d
