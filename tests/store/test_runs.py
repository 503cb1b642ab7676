"""Assessment runs on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from bastion.assess.schema import Report
from bastion.errors import StoreError
from bastion.store.runs import get_run, list_runs, record_run
from tests.report.reports import evasion, make_report


def test_record_list_get(db_url, tmp_path):
    a = make_report([evasion("pgd", 0.5, 4.7)], score=40.0)
    b = make_report([evasion("fgsm", 0.2, 7.0), evasion("pgd", 0.1, 9.0)], name="m" * 256)
    ia = record_run(a, str(tmp_path / "a"), url=db_url)
    ib = record_run(b, str(tmp_path / "b"), kind="demo", url=db_url)
    assert ib > ia
    runs = list_runs(url=db_url)
    assert [r.id for r in runs] == [ib, ia]
    got = get_run(ia, url=db_url)
    assert got.score == 40.0 and got.n_findings == 1 and got.kind == "assess"
    assert Report.model_validate_json(got.report_json) == a
    assert get_run(ib, url=db_url).model_name == "m" * 256
    assert len(list_runs(limit=1, url=db_url)) == 1


@pytest.mark.parametrize("run_id", [0, 99, 2**31, 2**63 - 1])
def test_unknown_run(db_url, run_id):
    with pytest.raises(StoreError, match="no run with id"):
        get_run(run_id, url=db_url)
