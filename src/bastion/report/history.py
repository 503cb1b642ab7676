"""The previous assessment of the same model in the runs store (``bastion runs``).

"The same model" is the same model name (a retrained or hardened model keeps its name and
gets a new hash, which is what the comparison is for). The previous run is the most recent
recorded before this report was made; a stored report that no longer validates is passed
over with a warning rather than failing the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime

from pydantic import ValidationError
from sqlalchemy import select

from bastion.assess.schema import Report
from bastion.store.db import make_engine, session_factory
from bastion.store.runs import Run

log = logging.getLogger(__name__)
LOOKBACK = 50  # stored runs of the model examined, newest first


@dataclass(frozen=True)
class PreviousRun:
    run_id: int
    out_dir: str
    report: Report


def _utc(when: datetime) -> datetime:
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


def previous_run(
    report: Report, *, url: str | None = None, exclude_id: int | None = None
) -> PreviousRun | None:
    """The latest stored run of ``report``'s model made before it, or None."""
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            rows = list(
                session.scalars(
                    select(Run)
                    .where(Run.model_name == report.model.name)
                    .order_by(Run.id.desc())
                    .limit(LOOKBACK)
                )
            )
    finally:
        engine.dispose()
    made = _utc(report.created)
    for row in rows:
        if row.id == exclude_id or _utc(row.created) >= made:
            continue
        try:
            earlier = Report.model_validate_json(row.report_json)
        except ValidationError:
            log.warning("run %d: its stored report does not validate: passed over", row.id)
            continue
        if _utc(earlier.created) >= made:
            continue
        return PreviousRun(row.id, row.out_dir, earlier)
    return None
