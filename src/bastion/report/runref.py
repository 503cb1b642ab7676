"""A run named on the command line: a run directory (holding report.json), a report.json
file, or a run id of the store (as ``bastion runs show`` takes). Anything else is refused
with one line saying what was expected."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from bastion.assess.schema import Report
from bastion.errors import ConfigError
from bastion.risk.evidence import load_report
from bastion.store.ids import STORE_INT_MAX
from bastion.store.runs import get_run


@dataclass(frozen=True)
class RunRef:
    label: str
    report: Report
    run_id: int | None = None
    out_dir: Path | None = None


def load_run(ref: str, *, url: str | None = None) -> RunRef:
    """The run ``ref`` names (a directory, a report.json or a store id)."""
    path = Path(ref)
    if path.exists():
        if path.is_dir() and not (path / "report.json").is_file():
            raise ConfigError(f"{ref}: the folder holds no report.json: give a run directory")
        report = load_report(path)
        return RunRef(str(path), report, out_dir=path if path.is_dir() else path.parent)
    text = ref.strip()
    if text.isdigit() and 1 <= int(text) <= STORE_INT_MAX:
        run = get_run(int(text), url=url)
        try:
            report = Report.model_validate_json(run.report_json)
        except ValidationError:
            raise ConfigError(
                f"run {text}: its stored report does not validate (written by another version?)"
            ) from None
        return RunRef(f"run {text}", report, run_id=run.id, out_dir=Path(run.out_dir))
    raise ConfigError(
        f"{ref!r}: not a run directory, a report.json or a run id (see `bastion runs list`)"
    )
