"""Register exports: JSON (full, with derived scores and history) and CSV (one row a risk)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from bastion.risk.register import RiskRegister

CSV_COLUMNS = [
    "id",
    "title",
    "layer",
    "owner",
    "status",
    "status_reason",
    "severity",
    "occurrence",
    "detection",
    "rpn",
    "priority",
    "likelihood",
    "impact",
    "iso_score",
    "level",
    "probe",
    "atlas",
    "nist_ai_rmf",
    "controls",
    "measured",
    "changes",
]


def risk_rows(register: RiskRegister) -> list[dict[str, Any]]:
    """Flat rows (lists joined with '; ') in register order."""
    rows = []
    for r in register.risks:
        rows.append(
            {
                "id": r.id,
                "title": r.title,
                "layer": r.layer,
                "owner": r.owner,
                "status": r.status,
                "status_reason": r.status_reason,
                "severity": r.severity,
                "occurrence": r.occurrence,
                "detection": r.detection,
                **r.derived(),
                "probe": r.probe or "",
                "atlas": "; ".join(r.atlas),
                "nist_ai_rmf": "; ".join(r.nist_ai_rmf),
                "controls": "; ".join(f"{c.id} ({c.state})" for c in r.controls),
                "measured": "; ".join(f"{k}={v:.4g}" for k, v in r.measured.items()),
                "changes": len(r.history),
            }
        )
    return rows


def register_to_json(register: RiskRegister) -> dict[str, Any]:
    """The register with every risk's derived scores added."""
    data = register.model_dump(mode="json")
    for raw, risk in zip(data["risks"], register.risks, strict=True):
        raw.update(risk.derived())
    return data


def export_json(register: RiskRegister, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(register_to_json(register), indent=2))
    return path


def to_csv(register: RiskRegister) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(risk_rows(register))
    return buf.getvalue()


def export_csv(register: RiskRegister, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(to_csv(register))
    return path
