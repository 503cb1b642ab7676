"""Evidence a person can see: one captioned figure per kind of measurement, drawn from the
findings' ``series`` (inline PNG data URIs, nothing fetched).

- membership inference: every attack's ROC on one pair of log axes (the low-FPR regime is
  where a privacy breach shows, Carlini et al. 2022), with chance;
- extraction: the copy's fidelity against the query budget (log axis), per query source;
- evasion: robust accuracy against ε for the robustness curves.

A finding without the series is simply absent: nothing is drawn that was not measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bastion.assess.schema import Finding
from bastion.report.describe import num
from bastion.report.plots import to_data_uri

FLOOR = 1e-5  # log axes cannot show 0


@dataclass(frozen=True)
class EvidencePlot:
    kind: str
    title: str
    caption: str
    uri: str
    findings: tuple[str, ...]  # the finding keys drawn


def _has(f: Finding, *keys: str) -> bool:
    return all(k in f.series and f.series[k] for k in keys)


def membership_roc(findings: list[Finding]) -> EvidencePlot | None:
    rows = [f for f in findings if f.probe == "membership" and _has(f, "fpr", "tpr")]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.8))
    for f in rows:
        fpr = [max(v, FLOOR) for v in f.series["fpr"]]
        tpr = [max(v, FLOOR) for v in f.series["tpr"]]
        auc = f.metrics.get("auc")
        label = f.attack + (f" (AUC {auc:.3f})" if auc is not None else "")
        ax.plot(fpr, tpr, lw=1.6, label=label)
    ax.plot([FLOOR, 1], [FLOOR, 1], "k--", lw=0.8, label="chance")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(FLOOR, 1)
    ax.set_ylim(FLOOR, 1.05)
    ax.set_xlabel("false-positive rate (log)")
    ax.set_ylabel("true-positive rate (log)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title("membership inference ROC", fontsize=10)
    n = rows[0].params.get("n_members")
    caption = (
        "Each curve: how many training members an attack finds (TPR) for a given rate of "
        "false alarms (FPR), on log axes so the low-FPR regime is visible. Above the dashed "
        "line the attack beats chance."
        + (f" {n} members and as many non-members." if n is not None else "")
    )
    return EvidencePlot(
        "membership", "Membership inference", caption, to_data_uri(fig), tuple(f.key for f in rows)
    )


def extraction_fidelity(findings: list[Finding]) -> EvidencePlot | None:
    rows = [f for f in findings if f.probe == "extraction" and _has(f, "budget", "fidelity")]
    rows = [f for f in rows if len(f.series["budget"]) == len(f.series["fidelity"])]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for f in rows:
        source = f.params.get("source")
        label = f"{f.attack} ({source})" if source and source != f.attack else f.attack
        ax.plot(f.series["budget"], f.series["fidelity"], marker="o", ms=4, lw=1.6, label=label)
    if all(v > 0 for f in rows for v in f.series["budget"]):
        ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("queries spent by the attacker")
    ax.set_ylabel("fidelity (agreement with the model)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("model extraction: fidelity against query budget", fontsize=10)
    answers = rows[0].params.get("answers")
    caption = (
        "The share of held-out inputs on which a copy trained from the model's answers agrees "
        "with it, at each query budget measured"
        + (f" ({answers} answers)" if answers else "")
        + ". Larger budgets were not tried."
    )
    return EvidencePlot(
        "extraction", "Model extraction", caption, to_data_uri(fig), tuple(f.key for f in rows)
    )


def robustness_curve(findings: list[Finding]) -> EvidencePlot | None:
    rows = [
        f
        for f in findings
        if f.probe in {"evasion", "blackbox"}
        and _has(f, "eps", "robust_accuracy")
        and len(f.series["eps"]) == len(f.series["robust_accuracy"])
    ]
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    for f in rows:
        ax.plot(
            f.series["eps"],
            f.series["robust_accuracy"],
            marker="o",
            ms=3,
            lw=1.6,
            label=f"{f.probe} · {f.attack}",
        )
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("ε (largest change allowed per input)")
    ax.set_ylabel("robust accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("robustness curve", fontsize=10)
    f0 = rows[0]
    norm = {"inf": "L∞", "2": "L2"}.get(str(f0.params.get("norm")), "")
    n = f0.params.get("n")
    caption = (
        f"Accuracy under attack as the allowed change grows ({norm}"
        + (f", n={num(n)}" if n is not None else "")
        + "). Only the plotted ε values were measured."
    )
    return EvidencePlot(
        "robustness", "Robustness against ε", caption, to_data_uri(fig), tuple(f.key for f in rows)
    )


def evidence_plots(findings: list[Finding]) -> list[EvidencePlot]:
    """Every evidence figure the findings carry the data for."""
    plots = [membership_roc(findings), extraction_fidelity(findings), robustness_curve(findings)]
    return [p for p in plots if p is not None]
