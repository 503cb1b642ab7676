"""Tiny assessment runs for the dashboard tests: two recorded runs of one model (the later
one regressed) and a run folder with a gate decision beside it (no model is trained)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from bastion.gate.evaluate import GateDecision
from bastion.store.runs import record_run
from tests.report.reports import evasion, make_report, membership


def record_pair(url: str, out: Path) -> tuple[int, int]:
    """Run A (robust) then run B (evasion regressed) of ``tiny-cnn``: their store ids."""
    then = datetime.now(UTC) - timedelta(days=2)
    a = make_report(
        [evasion("pgd", 0.8, 1.6), membership(0.55, 0.01, 1.0)],
        score=20.0,
        sha="a" * 64,
        created=then,
    )
    b = make_report(
        [evasion("pgd", 0.2, 7.9), membership(0.55, 0.01, 1.0)],
        score=60.0,
        sha="b" * 64,
        created=then + timedelta(days=1),
    )
    ids = []
    for name, report in (("a", a), ("b", b)):
        folder = out / name
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(report.model_dump_json())
        ids.append(record_run(report, str(folder), url=url))
    return ids[0], ids[1]


def run_folder(runs_dir: Path, name: str = "other-run", *, passed: bool = False) -> Path:
    """A run folder (not in the store) of model ``other`` with a recorded gate decision."""
    report = make_report([evasion("fgsm", 0.5, 4.7)], name="other", sha="c" * 64, score=35.0)
    folder = runs_dir / name
    folder.mkdir(parents=True)
    (folder / "report.json").write_text(report.model_dump_json())
    decision = GateDecision(
        policy="release", policy_sha256="0" * 64, passed=passed, results=[], model_sha256="c" * 64
    )
    (folder / "gate.json").write_text(decision.model_dump_json())
    return folder
