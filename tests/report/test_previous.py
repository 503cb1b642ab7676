"""'Since the previous assessment': the model's previous recorded run found in the store,
compared in report.html (by `bastion assess` and `bastion runs report`)."""

from __future__ import annotations

from bastion.assess.api import assess
from bastion.assess.schema import Budgets, ThreatModel
from bastion.report.history import previous_run
from bastion.report.previous import since_previous
from bastion.store.runs import record_run
from tests.cli_runner import run_main
from tests.report.reports import earlier, evasion, make_report, tiny_digits_model


def test_previous_run_of_the_same_model(tmp_path):
    old = make_report([evasion("pgd", 0.5, 4.7)], score=40.0, created=earlier(2))
    other = make_report([evasion("pgd", 0.1, 9.0)], name="another-model", created=earlier(1))
    first = record_run(old, str(tmp_path / "old"))
    record_run(other, str(tmp_path / "other"))
    now = make_report([evasion("pgd", 0.2, 7.9)], score=55.0)
    prev = previous_run(now)
    assert prev is not None and prev.run_id == first and prev.report.score == 40.0
    cmp = since_previous(now)
    assert cmp is not None and cmp.regressed and cmp.a.label == f"run {first}"
    # a report made before every stored run of its model has no previous one
    assert previous_run(make_report([], created=earlier(3))) is None
    # nor does a model never assessed
    assert since_previous(make_report([], name="never-seen")) is None


def test_assess_report_compares_with_previous_run(digits, tmp_path):
    old = make_report(
        [evasion("fgsm", 0.99, 0.1, n=60)], name="Sequential", score=1.0, created=earlier()
    )
    record_run(old, str(tmp_path / "old"))
    tm = ThreatModel(
        eps=[0.1],
        attacks=["fgsm"],
        curve_attack="fgsm",
        curve_eps=[0.1],
        budgets=Budgets(n_eval=60, pgd_steps=5, apgd_steps=5),
        probes=["evasion"],
    )
    out = assess(tiny_digits_model(digits), digits, tm, tmp_path / "run")
    html = out.html_path.read_text()
    assert "Since the previous assessment" in html and "run 1" in html
    # the recorded run then finds nothing newer than itself as "previous"
    assert since_previous(out.report, exclude_id=out.run_id).a.label == "run 1"


def test_runs_report_cli_with_policy(tmp_path, monkeypatch, capsys):
    old = make_report([evasion("pgd", 0.5, 4.7)], score=40.0, created=earlier())
    record_run(old, str(tmp_path / "old"))
    run_dir = tmp_path / "now"
    run_dir.mkdir()
    now = make_report([evasion("pgd", 0.2, 7.9)], score=55.0)
    (run_dir / "report.json").write_text(now.model_dump_json())
    policy = tmp_path / "policy.yaml"
    policy.write_text("name: release\nrules:\n  - score <= 40\n")
    code, _out, err = run_main(monkeypatch, capsys, "runs", "report", run_dir, "--policy", policy)
    assert code == 0, err
    html = (run_dir / "report.html").read_text()
    assert 'class="verdict fail"' in html and "Since the previous assessment" in html
    assert "REGRESSED" in html
    target = tmp_path / "elsewhere" / "r.html"
    code, _, _ = run_main(
        monkeypatch, capsys, "runs", "report", run_dir, "--previous", run_dir, "--out", target
    )
    assert code == 0 and "No regression" in target.read_text()
    code, _, err = run_main(monkeypatch, capsys, "runs", "report", tmp_path / "missing")
    assert code == 2 and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules: [not a rule ((]\n")
    code, _, err = run_main(monkeypatch, capsys, "runs", "report", run_dir, "--policy", bad)
    assert code == 2 and "Traceback" not in err
