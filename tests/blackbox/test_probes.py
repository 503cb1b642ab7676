"""The blackbox and extraction probes: findings, severities, resume, sanity warnings."""

from __future__ import annotations

import json

import pytest
import torch

from bastion.assess.blackbox_probe import BlackBoxProbe
from bastion.assess.extraction_probe import ExtractionProbe
from bastion.assess.probe import ProbeContext
from bastion.assess.registry import make_probe, probe_names
from bastion.assess.runner import PARTIAL, finish, run_assessment, select_probes
from bastion.assess.schema import Budgets, Report, ThreatModel


def threat(**kw) -> ThreatModel:
    budgets = Budgets(n_blackbox=20, queries=120, extraction_queries=[50, 300], pgd_steps=10)
    return ThreatModel(**{"eps": [0.1, 0.3], "budgets": budgets, **kw})


@pytest.fixture()
def ctx(digits_model, digits, tmp_path):
    def make(**kw) -> ProbeContext:
        return ProbeContext(model=digits_model, data=digits, threat=threat(**kw), out_dir=tmp_path)

    return make


def test_probes_are_registered_and_chosen_by_the_threat_model(digits, digits_model, tmp_path):
    def ctx(threat):
        return ProbeContext(model=digits_model, data=digits, threat=threat, out_dir=tmp_path)

    assert {"blackbox", "extraction"} <= set(probe_names())
    assert make_probe("blackbox").name == "blackbox"
    assert make_probe("extraction").name == "extraction"
    for access in ("white_box", "scores", "labels"):
        chosen, _ = select_probes(ctx(ThreatModel(access=access)))
        assert {"blackbox", "extraction"} <= set(chosen)
    with pytest.raises(ValueError, match="at least 1 item"):  # refused where it is parsed
        Budgets(extraction_queries=[])
    assert "below" in BlackBoxProbe().applicable(ctx(ThreatModel(budgets=Budgets(queries=5))))


def test_blackbox_probe_findings_and_resume(ctx):
    c = ctx()
    findings = list(BlackBoxProbe().run(c))
    assert [(f.attack, f.params["eps"]) for f in findings] == [
        ("square", 0.1),
        ("square", 0.3),
        ("hopskipjump", 0.1),
        ("hopskipjump", 0.3),
    ]
    for f in findings:
        m = f.metrics
        assert 0 <= f.severity <= 10 and 0 <= m["robust_accuracy"] <= m["clean_accuracy"]
        assert 0 < m["queries"] <= 20 * 120
        assert f.params["max_queries"] == 120 and f.params["access"] == "scores"
    square = {f.params["eps"]: f for f in findings if f.attack == "square"}
    assert square[0.3].metrics["robust_accuracy"] < square[0.3].metrics["clean_accuracy"]
    assert square[0.3].severity >= square[0.1].severity
    hsj = findings[-1]
    assert "median_linf" in hsj.metrics and len(hsj.series["eps"]) == len(
        hsj.series["robust_accuracy"]
    )
    c.done = {f.key for f in findings}
    assert list(BlackBoxProbe().run(c)) == []


def test_labels_only_access_runs_hopskipjump_only(ctx):
    findings = list(BlackBoxProbe().run(ctx(access="labels", norm="2", eps=[1.0])))
    assert [f.attack for f in findings] == ["hopskipjump"]
    assert findings[0].params["access"] == "labels" and "median_l2" in findings[0].metrics


def test_blackbox_beating_whitebox_raises_a_sanity_warning(ctx):
    c = ctx()
    n = len(c.eval_set()[1])
    c.robust_masks = {0.3: torch.ones(n, dtype=torch.bool)}  # "all robust"
    list(BlackBoxProbe().run(c))
    checks = [w for w in c.warnings if w.check == "blackbox-beats-whitebox"]
    assert checks and all(w.probe == "blackbox" and "ε=0.3" in w.message for w in checks)
    c = ctx()
    c.robust_masks = {0.3: torch.zeros(n, dtype=torch.bool)}
    list(BlackBoxProbe().run(c))
    assert not c.warnings


def test_extraction_probe_reports_a_curve_per_source(ctx):
    c = ctx()
    findings = list(ExtractionProbe().run(c))
    assert [f.params["source"] for f in findings] == ["pool", "transformed", "jacobian"]
    for f in findings:
        assert f.series["budget"] == [50.0, 300.0]
        assert len(f.series["fidelity"]) == len(f.series["surrogate_accuracy"]) == 2
        assert len(f.series["transfer_success_rate"]) == 2
        assert f.metrics["queries"] == 300 and f.metrics["fidelity"] == f.series["fidelity"][-1]
        assert 0 <= f.severity <= 10
    pool = findings[0]
    assert pool.metrics["fidelity"] > 0.8 and pool.severity > 7
    c.done = {findings[0].key}
    assert [f.params["source"] for f in ExtractionProbe().run(c)] == ["transformed", "jacobian"]


def test_assessment_report_validates_and_resumes(digits_model, digits, tmp_path):
    t = threat(probes=["blackbox", "extraction"], eps=[0.2])
    t.budgets.extraction_queries = [40]
    make = lambda: ProbeContext(model=digits_model, data=digits, threat=t, out_dir=tmp_path)  # noqa: E731
    report = run_assessment(make())
    assert {f.probe for f in report.findings} == {"blackbox", "extraction"}
    assert all("queries" in f.metrics for f in report.findings)
    assert (tmp_path / PARTIAL).exists()
    again = run_assessment(make())  # every finding is in the checkpoint: nothing reruns
    assert [f.key for f in again.findings] == [f.key for f in report.findings]
    assert [f.seconds for f in again.findings] == [f.seconds for f in report.findings]
    path = finish(again, tmp_path)
    loaded = Report.model_validate(json.loads(path.read_text()))
    assert loaded.score > 0 and len(loaded.findings) == len(report.findings)
