"""The report's "Since the previous assessment" comparison: the model's previous recorded
run (:mod:`bastion.report.history`) compared with this report (:mod:`bastion.report.diff`).

A store that cannot be read leaves the section out with a warning: the comparison is a
convenience of the report, and the assessment it reports on has already succeeded.
"""

from __future__ import annotations

import logging

from sqlalchemy.exc import DBAPIError

from bastion.assess.schema import Report
from bastion.errors import StoreError
from bastion.report.diff import RunComparison, compare_reports
from bastion.report.history import previous_run

log = logging.getLogger(__name__)


def since_previous(
    report: Report, *, url: str | None = None, exclude_id: int | None = None
) -> RunComparison | None:
    """``report`` compared with its model's previous recorded run, or None when none."""
    try:
        prev = previous_run(report, url=url, exclude_id=exclude_id)
    except (StoreError, OSError, DBAPIError) as exc:
        log.warning("previous assessment not looked up: %s", exc)
        return None
    if prev is None:
        return None
    return compare_reports(prev.report, report, label_a=f"run {prev.run_id}", label_b="this run")
