"""Plain words for one finding: the budget it was measured at and what it measured.

Every sentence is built from the finding's own ``params`` and ``metrics`` (never from a
template that assumes a value): a budget the finding does not record is not mentioned, and
a metric it lacks is left out rather than guessed.
"""

from __future__ import annotations

import math

from bastion.assess.schema import Finding, Report

ACCESS_WORDS = {
    "white_box": "full (white-box) access to the model",
    "scores": "the model's class scores",
    "labels": "the model's predicted labels only",
    "black_box_chat": "black-box access to the application's chat API",
}


def pct(value: float) -> str:
    """A share as a percentage, one decimal below 10 %."""
    if not math.isfinite(value):
        return str(value)
    v = 100 * value
    return f"{v:.1f}%" if abs(v) < 10 else f"{v:.0f}%"


def num(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def norm_words(finding: Finding) -> str:
    norm = finding.params.get("norm")
    return {"inf": "L∞", "2": "L2"}.get(str(norm), f"L{norm}") if norm is not None else ""


def budget(finding: Finding) -> str:
    """The measured budget, e.g. ``ε=0.1 L∞ (absolute), n=120, 20 steps``."""
    p = finding.params
    parts: list[str] = []
    if "eps" in p:
        mode = f" ({p['eps_mode']})" if "eps_mode" in p else ""
        parts.append(f"ε={num(p['eps'])} {norm_words(finding)}{mode}".rstrip())
    elif "points" in p:
        parts.append(f"{p['points']} ε values, {norm_words(finding)}".rstrip(", "))
    if "n" in p:
        parts.append(f"n={p['n']}")
    if "steps" in p:
        parts.append(f"{p['steps']} steps")
    if "max_queries" in p:
        parts.append(f"≤{p['max_queries']} queries per point")
    if "budgets" in p and isinstance(p["budgets"], list) and p["budgets"]:
        parts.append(f"≤{max(p['budgets'])} queries")
    if "answers" in p or "access" in p:
        parts.append(f"{p.get('answers', p.get('access'))} answers")
    if "rate" in p:
        parts.append(f"{pct(float(p['rate']))} of training data poisoned")
    if "n_members" in p:
        parts.append(f"{p['n_members']} members")
    if "n_shadow" in p:
        parts.append(f"{p['n_shadow']} shadow models")
    return ", ".join(parts)


def _m(finding: Finding, name: str) -> float | None:
    v = finding.metrics.get(name)
    return v if v is not None and math.isfinite(v) else None


def measured(finding: Finding) -> str:
    """What the finding measured, in one sentence (no budget)."""
    probe, attack = finding.probe, finding.attack
    clean, robust = _m(finding, "clean_accuracy"), _m(finding, "robust_accuracy")
    if probe in {"evasion", "blackbox"} and attack.endswith("-curve"):
        mean = _m(finding, "mean_robust_accuracy")
        half = finding.metrics.get("eps_half_accuracy")
        name = attack.removesuffix("-curve")
        text = (
            f"{name} leaves {pct(mean)} accuracy on average over the ε grid"
            if mean is not None
            else f"{attack} measured a robustness curve"
        )
        if half is not None and math.isfinite(half):
            text += f"; accuracy falls below half of clean at ε={num(half)}"
        return text
    if probe in {"evasion", "blackbox"} and clean is not None and robust is not None:
        asr = _m(finding, "attack_success_rate")
        text = f"{attack} lowers accuracy from {pct(clean)} to {pct(robust)}"
        if asr is not None:
            text += f": it fools the model on {pct(asr)} of the points it classified correctly"
        return text
    if probe == "membership":
        auc, tpr = _m(finding, "auc"), _m(finding, "tpr_at_fpr")
        bits = []
        if auc is not None:
            bits.append(f"AUC {auc:.3f} (0.5 is chance)")
        if tpr is not None:
            bits.append(f"{pct(tpr)} of training members found at 0.1% false positives")
        return f"{attack} membership inference: " + (", ".join(bits) or "no metrics recorded")
    if probe == "extraction":
        fid, q = _m(finding, "fidelity"), _m(finding, "queries")
        if fid is None:
            return f"{attack} extraction: no fidelity recorded"
        text = f"a copy trained by {attack} agrees with the model on {pct(fid)} of held-out inputs"
        if q is not None:
            text += f" after {int(q)} queries"
        transfer = _m(finding, "transfer_success_rate")
        if transfer is not None:
            text += f"; adversarial examples made on the copy fool the model {pct(transfer)} of the time"
        return text
    if probe == "poisoning" and attack == "badnets":
        asr = _m(finding, "attack_success_rate")
        base = _m(finding, "clean_model_success_rate")
        text = (
            f"a planted backdoor trigger gets the attacker's label on {pct(asr or 0.0)} of inputs"
        )
        if base is not None:
            text += f" (the clean model: {pct(base)})"
        return text
    if probe == "poisoning":
        change = _m(finding, "accuracy_change")
        if change is not None:
            return f"{attack} changes clean accuracy by {change * 100:+.1f} points"
    shown = ", ".join(f"{k}={num(v)}" for k, v in list(finding.metrics.items())[:3])
    return f"{probe} · {attack}: {shown or 'no metrics recorded'}"


def sentence(finding: Finding) -> str:
    """``measured`` with its budget: "pgd lowers accuracy … (at ε=0.1 L∞, n=120)"."""
    b = budget(finding)
    return measured(finding) + (f" (at {b})" if b else "")


def attacker(report: Report) -> str:
    """Who the assessment modelled, from the threat model."""
    tm = report.threat_model
    words = ACCESS_WORDS.get(tm.access, tm.access)
    can_poison = getattr(tm, "can_poison", False)  # an LLM threat model has no poisoning
    poison = "; the attacker may also contribute training data" if can_poison else ""
    return f"an attacker with {words}{poison}"
