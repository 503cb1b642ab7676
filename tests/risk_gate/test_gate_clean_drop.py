"""The gate on evidence that is not there, and on clean accuracy: a probe the report did not
run never makes a rule pass (its skip reason is printed), `clean_accuracy` is read from the
evasion and black-box findings, and `clean_accuracy_drop` from a hardening comparison, a
baseline report or the comparison beside the assessed model."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from bastion.assess.schema import Finding, Skipped
from bastion.cli import build_app
from bastion.errors import ConfigError
from bastion.gate.evaluate import evaluate
from bastion.gate.junit import to_junit
from bastion.gate.policy import policy_from_data

from .conftest import evasion, make_report, write_report

MEMBERS_UNKNOWN = Skipped(
    probe="membership",
    status="not_measured",
    reason="the model's training rows are unknown: pass --members FILE",
)
NEEDS_GRADIENTS = Skipped(
    probe="evasion", status="not_applicable", reason="white-box evasion needs gradients"
)


def blackbox(attack: str, clean: float, robust: float) -> Finding:
    return Finding(
        probe="blackbox",
        attack=attack,
        params={"n": 20, "eps": 0.1, "queries": 100},
        metrics={"clean_accuracy": clean, "robust_accuracy": robust},
        severity=2.0,
    )


def decide(rules, report, **kw):
    return evaluate(policy_from_data(rules), report, **kw)


def without_membership():
    report = make_report([evasion("pgd", 0.1, 0.7)])
    report.skipped = [MEMBERS_UNKNOWN]
    return report


def test_a_membership_rule_on_a_report_without_membership_does_not_pass():
    report = without_membership()
    for rule in ("membership.tpr_at_fpr(0.001) <= 0.01", "membership.auc <= 0.6"):
        d = decide([rule, "robust_accuracy >= 0.5"], report)
        r = d.results[0]
        assert r.verdict == "fail" and r.measured is None and not d.passed
        assert "not measured: the report has no membership finding" in r.reason
        assert "membership not measured: the model's training rows are unknown" in r.reason
    d = decide(["severity(probe=membership) <= 3"], report)
    assert d.results[0].verdict == "fail"
    assert "membership not measured" in d.results[0].reason
    # if_missing: skip reports it as skipped, never as holding
    d = decide([{"rule": "membership.tpr_at_fpr(0.001) <= 0.01", "if_missing": "skip"}], report)
    assert d.results[0].verdict == "skip" and d.summary() == "PASS: 0/1 rules hold, 1 skipped"
    case = to_junit(d)
    assert '<skipped message="not measured: the report has no membership finding' in case
    assert d.skipped == [MEMBERS_UNKNOWN]


def test_no_warnings_is_not_measured_when_no_attack_ran():
    extraction = Finding(
        probe="extraction", attack="knockoff", metrics={"fidelity": 0.5}, severity=1
    )
    report = make_report([extraction])
    report.skipped = [NEEDS_GRADIENTS, MEMBERS_UNKNOWN]
    d = decide(["sanity_warnings == 0"], report)
    assert d.results[0].verdict == "fail" and d.results[0].measured is None
    assert "evasion not applicable: white-box evasion needs gradients" in d.results[0].reason
    report.findings.append(blackbox("square", 0.9, 0.6))
    assert decide(["sanity_warnings == 0"], report).passed


def test_score_says_which_probes_it_leaves_out():
    d = decide(["score <= 40"], without_membership())
    assert d.passed and "not in it: membership (did not run)" in d.results[0].reason


def test_clean_accuracy_from_evasion_and_blackbox_findings():
    report = make_report([evasion("pgd", 0.1, 0.7, clean=0.95), blackbox("square", 0.88, 0.5)])
    d = decide(["clean_accuracy >= 0.9", "evasion.clean_accuracy >= 0.9"], report)
    plain, ev = d.results
    assert plain.measured == pytest.approx(0.88) and plain.verdict == "fail"  # worst case
    assert ev.measured == pytest.approx(0.95) and ev.verdict == "pass"
    # a gradient-free model has only black-box findings: clean accuracy is still measured
    gbm = make_report([blackbox("square", 0.93, 0.4), blackbox("hopskipjump", 0.93, 0.5)])
    gbm.skipped = [NEEDS_GRADIENTS]
    d = decide(["clean_accuracy >= 0.9", "robust_accuracy >= 0.1"], gbm)
    assert d.results[0].verdict == "pass" and d.results[0].measured == pytest.approx(0.93)
    assert d.results[1].verdict == "fail"
    assert "evasion not applicable: white-box evasion needs gradients" in d.results[1].reason
    assert decide(["clean_accuracy(attack=square) >= 0.9"], gbm).passed
    nothing = make_report([])
    nothing.skipped = [NEEDS_GRADIENTS]
    r = decide(["clean_accuracy >= 0.9"], nothing).results[0]
    assert r.verdict == "fail" and "no evasion or blackbox finding" in r.reason


def comparison_doc(child_sha: str, rows: list[dict], **extra) -> dict:
    return {
        "parent": {"name": "parent", "sha256": "p" * 64},
        "child": {"name": "child", "sha256": child_sha},
        "recipe": "pgd-at",
        "recipe_steps": [],
        "rows": rows,
        **extra,
    }


ROWS = [
    {"group": "accuracy", "metric": "test accuracy (full test set)", "parent": 0.97, "child": 0.90},
    {"group": "accuracy", "metric": "clean accuracy (n=100)", "parent": 0.96, "child": 0.93},
    {"group": "evasion", "metric": "robust accuracy · pgd", "parent": 0.1, "child": 0.6},
]


def test_clean_accuracy_drop_from_a_comparison(tmp_path):
    report = make_report(model_sha="c" * 64)
    path = tmp_path / "comparison.json"
    path.write_text(json.dumps(comparison_doc("c" * 64, ROWS)))
    rules = ["clean_accuracy_drop <= 0.05", "clean_accuracy_drop <= 0.1"]
    d = decide(rules, report, comparison=path)
    tight, loose = d.results
    assert tight.measured == pytest.approx(0.07) and tight.verdict == "fail"  # the worst row
    assert "test accuracy (full test set): parent 0.97 → 0.9" in tight.reason
    assert loose.verdict == "pass"
    assert d.clean_accuracy_drop is not None and d.clean_accuracy_drop.path == str(path)
    # the record's own clean_accuracy_drop wins over the rows
    path.write_text(json.dumps(comparison_doc("c" * 64, ROWS, clean_accuracy_drop=0.01)))
    d = decide(rules, report, comparison=path)
    assert d.passed and d.results[0].measured == pytest.approx(0.01)
    # a comparison of another model is refused, not read
    path.write_text(json.dumps(comparison_doc("d" * 64, ROWS)))
    with pytest.raises(ConfigError, match=r"compares the model dddddddddddd… .* the report is"):
        decide(rules, report, comparison=path)
    path.write_text("{}")
    with pytest.raises(ConfigError, match="not a `bastion harden` comparison"):
        decide(rules, report, comparison=path)


def test_clean_accuracy_drop_is_not_measured_without_a_baseline():
    d = decide(["clean_accuracy_drop <= 0.05"], make_report())
    r = d.results[0]
    assert r.verdict == "fail" and r.measured is None
    assert "no clean-accuracy baseline: pass --comparison comparison.json" in r.reason
    d = decide([{"rule": "clean_accuracy_drop <= 0.05", "if_missing": "skip"}], make_report())
    assert d.results[0].verdict == "skip" and d.passed


def test_clean_accuracy_drop_from_a_baseline_report(tmp_path):
    parent = make_report([evasion("pgd", 0.1, 0.2, clean=0.97), evasion("fgsm", 0.1, 0.3, 0.97)])
    child = make_report([evasion("pgd", 0.1, 0.6, clean=0.80), evasion("fgsm", 0.1, 0.6, 0.80)])
    base = write_report(parent, tmp_path / "parent" / "report.json")
    d = decide(["clean_accuracy_drop <= 0.05"], child, baseline=base)
    assert d.results[0].measured == pytest.approx(0.17) and not d.passed
    assert "clean accuracy 0.97 in the baseline → 0.8" in d.results[0].reason
    other = write_report(make_report([blackbox("square", 0.9, 0.1)]), tmp_path / "o.json")
    r = decide(["clean_accuracy_drop <= 0.05"], child, baseline=other).results[0]
    assert r.verdict == "fail" and "matches one of the report" in r.reason
    with pytest.raises(ConfigError, match="not both"):
        decide(["score <= 100"], child, baseline=base, comparison=base)


def test_clean_accuracy_drop_from_the_comparison_beside_the_model(tmp_path):
    model = tmp_path / "hardened"
    (model / "comparison").mkdir(parents=True)
    report = make_report(model_sha="c" * 64, model_path=str(model))
    doc = comparison_doc("c" * 64, ROWS)
    (model / "comparison" / "comparison.json").write_text(json.dumps(doc))
    d = decide(["clean_accuracy_drop <= 0.1"], report)
    assert d.passed and d.results[0].measured == pytest.approx(0.07)
    # a stale comparison (of an earlier child) is not this model's: not measured
    doc["child"]["sha256"] = "e" * 64
    (model / "comparison" / "comparison.json").write_text(json.dumps(doc))
    assert decide(["clean_accuracy_drop <= 0.1"], report).results[0].verdict == "fail"
    # a drop the model's provenance records
    (model / "provenance.json").write_text(json.dumps({"harden": {"clean_accuracy_drop": 0.02}}))
    r = decide(["clean_accuracy_drop <= 0.05"], report).results[0]
    assert r.verdict == "pass" and "provenance.json" in r.reason


def test_cli_gate_with_a_comparison_prints_skip_reasons(tmp_path):
    report = without_membership()
    report.model.sha256 = "c" * 64
    rpath = write_report(report, tmp_path / "a" / "report.json")
    comp = tmp_path / "comparison.json"
    comp.write_text(json.dumps(comparison_doc("c" * 64, ROWS)))
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "rules:\n  - clean_accuracy >= 0.9\n  - clean_accuracy_drop <= 0.1\n"
        "  - membership.tpr_at_fpr(0.001) <= 0.01\n"
    )
    app, runner = build_app(), CliRunner()
    args = ["gate", "--report", str(rpath), "--policy", str(policy)]
    r = runner.invoke(app, [*args, "--comparison", str(comp)])
    assert r.exit_code == 1, r.output  # membership is not measured: the gate fails
    assert "membership: not measured: the model's training rows are unknown" in r.output
    assert "clean-accuracy drop from test accuracy (full test set)" in r.output
    policy.write_text("rules:\n  - clean_accuracy >= 0.9\n  - clean_accuracy_drop <= 0.1\n")
    r = runner.invoke(app, [*args, "--comparison", str(comp)])
    assert r.exit_code == 0, r.output
    out = tmp_path / "decision.json"
    r = runner.invoke(app, [*args, "--json", str(out)])
    assert r.exit_code == 1
    drop = json.loads(out.read_text())["results"][1]
    assert drop["verdict"] == "fail" and "no clean-accuracy baseline" in drop["reason"]


def test_reads_the_comparison_record_bastion_harden_writes(tmp_path):
    from bastion.defenses.compare import Comparison, MetricRow, ModelSummary

    comp = Comparison(
        parent=ModelSummary(name="parent", sha256="p" * 64),
        child=ModelSummary(name="child", sha256="c" * 64),
        recipe="pgd-at",
        recipe_steps=[],
        rows=[MetricRow(group="accuracy", metric="test accuracy", parent=0.95, child=0.91)],
        clean_accuracy_drop=0.04,
    )
    path = tmp_path / "comparison.json"
    path.write_text(comp.model_dump_json(indent=2))
    report = make_report(model_sha="c" * 64)
    d = decide(
        ["clean_accuracy_drop <= 0.05", "clean_accuracy_drop <= 0.03"], report, comparison=path
    )
    assert [r.verdict for r in d.results] == ["pass", "fail"]
    assert d.results[0].measured == pytest.approx(0.04)
