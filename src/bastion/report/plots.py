"""Matplotlib figures rendered to inline PNG data URIs (self-contained reports, no CDN)."""

from __future__ import annotations

import base64
import io
import math

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from bastion.assess.schema import Finding


def to_data_uri(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def series_plot(finding: Finding) -> str | None:
    """Plot a finding's ``series``: ROC on log-log axes, curves against their first key."""
    s = finding.series
    if len(s) < 2:
        return None
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    title = f"{finding.probe} · {finding.attack}"
    if "fpr" in s and "tpr" in s:
        fpr = [max(v, 1e-5) for v in s["fpr"]]
        tpr = [max(v, 1e-5) for v in s["tpr"]]
        ax.plot(fpr, tpr, lw=1.8, label=finding.attack)
        ax.plot([1e-5, 1], [1e-5, 1], "k--", lw=0.8, label="chance")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("false-positive rate")
        ax.set_ylabel("true-positive rate")
        ax.legend(loc="lower right", fontsize=8)
        title += " (ROC, log scale)"
    else:
        keys = list(s)
        xk = keys[0]
        for yk in keys[1:]:
            if len(s[yk]) == len(s[xk]):
                ax.plot(s[xk], s[yk], marker="o", ms=3, lw=1.6, label=yk.replace("_", " "))
        if xk in {"queries", "budget"} and all(v > 0 for v in s[xk]):
            ax.set_xscale("log")
        ax.set_xlabel(xk.replace("_", " "))
        ax.set_ylim(-0.02, 1.02) if all(
            0 <= v <= 1 for k in keys[1:] for v in s[k] if math.isfinite(v)
        ) else None
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return to_data_uri(fig)


def accuracy_bars(findings: list[Finding]) -> str | None:
    """Clean vs robust accuracy for every evasion-style finding at its ε."""
    rows = [f for f in findings if "robust_accuracy" in f.metrics and "clean_accuracy" in f.metrics]
    if not rows:
        return None
    labels = [f"{f.attack}\nε={f.params.get('eps', '?')}" for f in rows]
    fig, ax = plt.subplots(figsize=(max(4.5, 0.8 * len(rows) + 2), 3.2))
    xs = range(len(rows))
    ax.bar([i - 0.2 for i in xs], [f.metrics["clean_accuracy"] for f in rows], 0.4, label="clean")
    ax.bar([i + 0.2 for i in xs], [f.metrics["robust_accuracy"] for f in rows], 0.4, label="robust")
    ax.set_xticks(list(xs), labels, fontsize=7)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return to_data_uri(fig)
