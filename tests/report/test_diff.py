"""Run comparison: the typed record and `bastion runs diff A B`."""

from __future__ import annotations

import json
import math

from bastion.assess.schema import SanityWarning
from bastion.report.diff import better_direction, compare_reports, judge
from bastion.store.runs import record_run
from tests.cli_runner import run_main
from tests.report.reports import earlier, evasion, make_report, membership


def _pair():
    a = make_report(
        [evasion("pgd", 0.5, 4.7), membership(0.6, 0.01, 3.0), evasion("fgsm", 0.8, 1.6)],
        score=40.0,
        created=earlier(),
    )
    b = make_report(
        [evasion("pgd", 0.2, 7.9), membership(0.52, 0.002, 0.8), evasion("fgsm", 0.8, 1.6, n=200)],
        score=55.0,
        sha="b" * 64,
        warnings=[SanityWarning(check="convergence", message="raise the budgets")],
    )
    return a, b


def test_directions_and_judge():
    assert better_direction("robust_accuracy") == "higher"
    assert better_direction("attack_success_rate") == "lower"
    assert better_direction("tpr_at_1%_fpr") == "lower"
    assert better_direction("queries") is None
    assert judge(0.5, 0.2, "higher", 1e-3) == "worse"
    assert judge(0.5, 0.2, "lower", 1e-3) == "better"
    assert judge(0.5, 0.5004, "higher", 1e-3) == "same"
    assert judge(1.0, 2.0, None, 1e-3) == "changed"
    assert judge(None, 1.0, "lower", 0) == "new" and judge(1.0, None, "lower", 0) == "gone"
    assert judge(math.inf, 0.3, "higher", 1e-3) == "worse"  # ε to halve accuracy now reached
    assert judge(math.inf, math.inf, "higher", 1e-3) == "same"


def test_comparison_record():
    a, b = _pair()
    cmp = compare_reports(a, b, label_a="run 1", label_b="run 2")
    by = {f.label: f for f in cmp.findings}
    pgd = by["evasion · pgd ε=0.1"]
    assert pgd.status == "worse" and (pgd.severity_a, pgd.severity_b) == (4.7, 7.9)
    robust = next(m for m in pgd.metrics if m.name == "robust_accuracy")
    assert robust.status == "worse" and abs(robust.delta + 0.3) < 1e-9
    mia = by["membership · loss-threshold"]
    assert mia.status == "better"
    assert {m.name: m.status for m in mia.metrics}["auc"] == "better"
    fgsm = by["evasion · fgsm ε=0.1"]  # n changed: matched loosely, with a note
    assert fgsm.status == "same" and "other parameters differ" in fgsm.note
    assert cmp.score_status == "worse"
    assert cmp.warnings_added == ["convergence (evasion)"]
    assert cmp.regressed
    assert any("severity 4.7 → 7.9" in r for r in cmp.regressions)
    assert any("models differ" in n for n in cmp.notes)
    data = json.loads(cmp.model_dump_json())
    assert data["regressed"] is True and data["regressions"]
    # the other way round: pgd and the score improve, membership regresses
    back = compare_reports(b, a)
    assert back.regressions == ["membership · loss-threshold: severity 0.8 → 3"]
    assert "evasion · pgd ε=0.1: severity 7.9 → 4.7" in back.improvements
    assert back.warnings_removed == ["convergence (evasion)"]


def test_new_and_gone_are_not_regressions():
    a = make_report([evasion("pgd", 0.5, 4.0)], score=40.0, created=earlier())
    b = make_report([membership(0.7, 0.05, 5.0)], score=40.0)
    cmp = compare_reports(a, b)
    assert sorted(f.status for f in cmp.findings) == ["gone", "new"]
    assert not cmp.regressed


def _write(tmp_path, name, report):
    d = tmp_path / name
    d.mkdir()
    (d / "report.json").write_text(report.model_dump_json())
    return d


def test_cli_diff_dirs(tmp_path, monkeypatch, capsys):
    a, b = _pair()
    da, db = _write(tmp_path, "a", a), _write(tmp_path, "b", b)
    code, out, _err = run_main(monkeypatch, capsys, "runs", "diff", da, db)
    assert code == 0 and "REGRESSED" in out and "regression(s)" in out
    code, out, _ = run_main(monkeypatch, capsys, "runs", "diff", da, db, "--fail-on-regression")
    assert code == 1
    hardened = make_report(
        [evasion("pgd", 0.7, 2.6), membership(0.6, 0.01, 3.0), evasion("fgsm", 0.9, 0.5)],
        score=30.0,
    )
    dh = _write(tmp_path, "hardened", hardened)
    code, out, _ = run_main(monkeypatch, capsys, "runs", "diff", da, dh, "--fail-on-regression")
    assert code == 0 and "no regression" in out and "better" in out
    code, out, _ = run_main(monkeypatch, capsys, "runs", "diff", da, db / "report.json", "--json")
    data = json.loads(out)
    assert code == 0 and data["regressed"] is True and data["score_status"] == "worse"


def test_cli_diff_run_ids(tmp_path, monkeypatch, capsys):
    a, b = _pair()
    ia = record_run(a, str(tmp_path / "a"))
    ib = record_run(b, str(tmp_path / "b"))
    code, out, _ = run_main(monkeypatch, capsys, "runs", "diff", str(ia), str(ib), "--json")
    assert code == 0
    data = json.loads(out)
    assert data["a"]["label"] == f"run {ia}" and data["b"]["label"] == f"run {ib}"


def test_cli_diff_bad_input(tmp_path, monkeypatch, capsys):
    a, _ = _pair()
    da = _write(tmp_path, "a", a)
    empty = tmp_path / "empty"
    empty.mkdir()
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    for other in ("nonsense", "999", empty, broken):
        code, _out, err = run_main(monkeypatch, capsys, "runs", "diff", da, other)
        assert code == 2, other
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    code, _, err = run_main(monkeypatch, capsys, "runs", "diff", da, da, "--tolerance", "-1")
    assert code == 2 and len(err.strip().splitlines()) == 1
