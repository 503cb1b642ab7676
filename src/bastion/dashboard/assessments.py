"""The assessment runs the dashboard shows: the runs store (``bastion runs``: the rows of
the gateway's database) and, for ``bastion dashboard --runs DIR``, the run directories in
``DIR`` (each holding a ``report.json``; ``DIR`` itself may be one).

A run is named by a *ref*: ``7`` for stored run 7, ``dir:NAME`` for the folder ``DIR/NAME``
(``dir:.`` for ``DIR`` itself). A run directory that the store also records is listed once,
as the stored run. A gate decision is shown when one was recorded for the run: a
``gate.json`` (``bastion gate --json``) in the run's directory whose model hash matches.
A stored report that no longer validates is listed without its findings, never an error.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import Engine

from bastion.assess.schema import Report
from bastion.gate.evaluate import GateDecision
from bastion.store.db import session_factory
from bastion.store.ids import STORE_INT_MAX
from bastion.store.runs import Run

log = logging.getLogger(__name__)
LISTED = 200  # stored runs listed, newest first
GATE_FILES = ("gate.json", "decision.json")
REF = re.compile(r"^(?:[1-9][0-9]{0,18}|dir:(?:\.|[A-Za-z0-9][A-Za-z0-9._-]{0,199}))$")


class UnknownRun(LookupError):
    """No run with that ref (the page answers 404)."""


@dataclass(frozen=True)
class RunRow:
    """One assessment in the list."""

    ref: str
    source: str  # "store" or "folder"
    model: str
    model_sha256: str
    dataset: str
    created: datetime
    score: float
    n_findings: int
    verdict: str | None  # "PASS" / "FAIL" when a gate decision is recorded
    out_dir: str


@dataclass(frozen=True)
class Assessment:
    """One run loaded for its page."""

    row: RunRow
    report: Report | None  # None: the stored report does not validate
    out_dir: Path | None
    decision: GateDecision | None
    problem: str = ""


def valid_ref(ref: str) -> bool:
    return bool(REF.match(ref)) and (not ref.isdigit() or int(ref) <= STORE_INT_MAX)


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def recorded_decision(out_dir: Path | None, report: Report | None) -> GateDecision | None:
    """The gate decision recorded beside the run (for its model), or None."""
    if out_dir is None:
        return None
    for name in GATE_FILES:
        path = out_dir / name
        try:
            if not path.is_file():
                continue
            decision = GateDecision.model_validate_json(path.read_text())
        except (OSError, ValidationError, ValueError):
            log.warning("%s: not a gate decision: passed over", path)
            continue
        if report is not None and decision.model_sha256 not in (None, report.model.sha256):
            continue  # a decision about another model
        return decision
    return None


def _verdict(decision: GateDecision | None) -> str | None:
    return None if decision is None else ("PASS" if decision.passed else "FAIL")


def _report_of(text: str) -> Report | None:
    try:
        return Report.model_validate_json(text)
    except ValidationError:
        return None


def _stored_row(run: Run) -> tuple[RunRow, Report | None]:
    report = _report_of(run.report_json)
    out = Path(run.out_dir) if run.out_dir else None
    row = RunRow(
        ref=str(run.id),
        source="store",
        model=run.model_name,
        model_sha256=run.model_sha256,
        dataset=run.dataset_name,
        created=_utc(run.created),
        score=run.score,
        n_findings=run.n_findings,
        verdict=_verdict(recorded_decision(out, report)),
        out_dir=run.out_dir,
    )
    return row, report


def _folder_row(ref: str, folder: Path) -> tuple[RunRow, Report | None]:
    report = _report_of((folder / "report.json").read_text())
    if report is None:
        raise ValueError(f"{folder / 'report.json'} does not validate")
    row = RunRow(
        ref=ref,
        source="folder",
        model=report.model.name,
        model_sha256=report.model.sha256,
        dataset=report.dataset.name,
        created=_utc(report.created),
        score=report.score,
        n_findings=len(report.findings),
        verdict=_verdict(recorded_decision(folder, report)),
        out_dir=str(folder),
    )
    return row, report


def _folders(runs_dir: Path | None) -> list[tuple[str, Path]]:
    if runs_dir is None or not runs_dir.is_dir():
        return []
    found = [("dir:.", runs_dir)] if (runs_dir / "report.json").is_file() else []
    for child in sorted(runs_dir.iterdir()):
        ref = f"dir:{child.name}"
        if valid_ref(ref) and child.is_dir() and (child / "report.json").is_file():
            found.append((ref, child))
    return found


def _resolved(path: str | Path) -> str:
    try:
        return str(Path(path).resolve())
    except (OSError, RuntimeError):
        return str(path)


def list_runs(engine: Engine, runs_dir: Path | None) -> list[RunRow]:
    """Every assessment, newest first."""
    with session_factory(engine)() as session:
        stored = list(session.scalars(select(Run).order_by(Run.id.desc()).limit(LISTED)))
    rows = [_stored_row(r)[0] for r in stored]
    known = {_resolved(r.out_dir) for r in stored if r.out_dir}
    for ref, folder in _folders(runs_dir):
        if _resolved(folder) in known:
            continue
        try:
            rows.append(_folder_row(ref, folder)[0])
        except (OSError, ValueError) as exc:
            log.warning("run folder %s passed over: %s", folder, exc)
    return sorted(rows, key=lambda r: r.created, reverse=True)


def latest_per_model(rows: list[RunRow]) -> list[RunRow]:
    """Each model's newest run (``rows`` newest first), by model name."""
    seen: dict[str, RunRow] = {}
    for row in rows:
        seen.setdefault(row.model, row)
    return sorted(seen.values(), key=lambda r: r.model)


def load(engine: Engine, runs_dir: Path | None, ref: str) -> Assessment:
    """The run ``ref`` names (:class:`UnknownRun` when there is none)."""
    if not valid_ref(ref):
        raise UnknownRun(f"{ref!r} is not a run: pick one from the list")
    if ref.isdigit():
        with session_factory(engine)() as session:
            run = session.get(Run, int(ref))
        if run is None:
            raise UnknownRun(f"no stored run {ref}")
        row, report = _stored_row(run)
        out = Path(run.out_dir) if run.out_dir else None
        problem = "" if report is not None else "the stored report does not validate"
        return Assessment(row, report, out, recorded_decision(out, report), problem)
    for known, folder in _folders(runs_dir):
        if known == ref:
            try:
                row, report = _folder_row(ref, folder)
            except (OSError, ValueError) as exc:
                raise UnknownRun(f"run folder {folder.name}: {exc}") from None
            return Assessment(row, report, folder, recorded_decision(folder, report))
    raise UnknownRun(f"no run folder {ref[4:]}")
