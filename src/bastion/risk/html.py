"""The HTML risk report: the ISO 31000 likelihood × impact heat map, the FMEA table and the
history of evidence-driven changes. One self-contained page (inline CSS, no scripts, no CDN)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, PackageLoader, select_autoescape

from bastion import __version__
from bastion.risk import scoring
from bastion.risk.register import RiskRegister

PRIORITY_ORDER = {"high": 0, "medium": 1, "low": 2}


def heat_map(register: RiskRegister) -> list[dict[str, Any]]:
    """Rows from likelihood 5 (top) to 1; each cell holds its level and the risk ids there."""
    rows = []
    for lk in range(5, 0, -1):
        cells = []
        for im in range(1, 6):
            ids = [r.id for r in register.risks if r.likelihood == lk and r.impact == im]
            cells.append(
                {"likelihood": lk, "impact": im, "level": scoring.iso_level(lk, im), "risks": ids}
            )
        rows.append({"likelihood": lk, "label": scoring.LIKELIHOOD_LABELS[lk - 1], "cells": cells})
    return rows


def render_risk_report(register: RiskRegister) -> str:
    env = Environment(
        loader=PackageLoader("bastion.risk", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    risks = sorted(register.risks, key=lambda r: (PRIORITY_ORDER[r.priority], -r.rpn, r.id))
    counts = {p: sum(r.priority == p for r in register.risks) for p in PRIORITY_ORDER}
    open_high = sum(r.priority == "high" and r.status == "open" for r in register.risks)
    history = sorted(
        (
            (r.id, c)
            for r in register.risks
            for c in r.history
            if c.evidence is None or c.evidence.kind != "profile"
        ),
        key=lambda item: item[1].at,
        reverse=True,
    )
    return env.get_template("risk_report.html.j2").render(
        register=register,
        risks=risks,
        heat=heat_map(register),
        counts=counts,
        open_high=open_high,
        history=history,
        impact_labels=scoring.IMPACT_LABELS,
        generated=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        version=__version__,
    )


def write_risk_report(register: RiskRegister, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render_risk_report(register))
    return path
