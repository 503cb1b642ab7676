"""Evidence moves the register: measured attack results set occurrence, detector rates set
detection, and every change keeps the file, its hash, the metric and old → new."""

from __future__ import annotations

import json

import pytest

from bastion.assess.schema import Finding
from bastion.errors import ConfigError
from bastion.risk.evidence import (
    file_sha256,
    load_guard_evaluation,
    load_report,
    update_from_report,
)
from bastion.risk.scoring import rate_to_occurrence, tpr_to_occurrence

from .conftest import evasion, make_report, membership, write_report


def test_update_sets_occurrence_with_evidence(register, tmp_path):
    report = make_report()
    path = write_report(report, tmp_path / "report.json")
    before = register.get("EVA-01").occurrence
    result = update_from_report(register, report, report_path=path, by="ci")
    eva = register.get("EVA-01")
    worst = max(f.metrics["attack_success_rate"] for f in report.findings if f.probe == "evasion")
    assert eva.occurrence == rate_to_occurrence(worst) != before
    change = eva.history[-1]
    assert (change.field, change.old, change.new, change.by) == (
        "occurrence",
        before,
        eva.occurrence,
        "ci",
    )
    ev = change.evidence
    assert ev.kind == "report" and ev.source == str(path) and ev.sha256 == file_sha256(path)
    assert ev.metric == "evasion.attack_success_rate" and ev.value == pytest.approx(worst)
    assert "eps=0.2" in ev.detail  # the finding that set it
    assert ("EVA-01", change) in result.changes
    assert eva.measured["evasion.attack_success_rate"] == pytest.approx(worst)
    # membership: TPR at the lowest FPR with >= 1 expected false positive (1 % of 450)
    mia = register.get("MIA-01")
    assert mia.occurrence == tpr_to_occurrence(0.02, 0.01)
    assert mia.history[-1].evidence.metric == "membership.tpr_at_1%_fpr"
    unmeasured = dict(result.unmeasured)
    assert unmeasured["EXT-01"] == "no extraction finding in the report"
    assert unmeasured["SUP-01"] == "no probe measures this threat"
    assert register.updates[-1].sources[0].sha256 == ev.sha256


def test_update_is_idempotent(register):
    report = make_report()
    update_from_report(register, report)
    n = sum(len(r.history) for r in register.risks)
    again = update_from_report(register, report)
    assert again.changes == [] and sum(len(r.history) for r in register.risks) == n


def test_better_model_lowers_occurrence(register):
    update_from_report(register, make_report([evasion("pgd", 0.1, 0.2)]))
    high = register.get("EVA-01").occurrence
    update_from_report(register, make_report([evasion("pgd", 0.1, 0.9)]))
    eva = register.get("EVA-01")
    assert eva.occurrence < high
    assert [c.new for c in eva.history if c.field == "occurrence"][-2:] == [high, eva.occurrence]


def test_mitigated_risk_reopens_when_evidence_gets_worse(register):
    update_from_report(register, make_report([evasion("pgd", 0.1, 0.9)]))
    register.set_status("EVA-01", "mitigated", reason="adversarial training")
    result = update_from_report(register, make_report([evasion("pgd", 0.1, 0.1)]))
    eva = register.get("EVA-01")
    assert eva.status == "open"
    reopen = eva.history[-1]
    assert reopen.field == "status" and reopen.old == "mitigated" and "reopened" in reopen.reason
    assert ("EVA-01", reopen) in result.changes
    # accepted risks stay accepted: a person decided
    register.set_status("EVA-01", "accepted", reason="low value target")
    update_from_report(register, make_report([evasion("pgd", 0.1, 0.0)]))
    assert register.get("EVA-01").status == "accepted"


def test_poisoning_and_extraction_mappings(register):
    findings = [
        Finding(
            probe="poisoning",
            attack="badnets",
            severity=9,
            metrics={"attack_success_rate": 0.91, "clean_model_success_rate": 0.1},
        ),
        Finding(
            probe="poisoning",
            attack="label-flip",
            severity=3,
            metrics={"clean_accuracy": 0.8, "accuracy_change": -0.15},
        ),
        Finding(
            probe="extraction",
            attack="knockoff",
            params={"queries": 1000},
            severity=5,
            metrics={"fidelity": 0.91},
        ),
        Finding(
            probe="extraction",
            attack="knockoff",
            params={"queries": 100},
            severity=2,
            metrics={"fidelity": 0.40},
        ),
    ]
    update_from_report(register, make_report(findings))
    assert register.get("POI-01").occurrence == rate_to_occurrence((0.91 - 0.1) / 0.9)
    assert register.get("POI-02").occurrence == rate_to_occurrence(0.15 / 0.3)
    assert register.get("POI-02").history[-1].evidence.metric == "poisoning.clean_accuracy_drop"
    assert register.get("EXT-01").occurrence == rate_to_occurrence((0.91 - 0.1) / 0.9)


def _adaptive_eval(detectors: dict, non_adaptive: dict | None = None) -> dict:
    attack = {"name": "orthogonal-pgd", "norm": "inf", "eps": 0.1, "steps": 100, "restarts": 2}
    return {
        "model": "digits",
        "adaptive": {"kind": "adaptive", "attack": attack, "detectors": detectors},
        "non_adaptive": {
            "kind": "non_adaptive",
            "attack": {"name": "pgd", "eps": 0.1, "steps": 20},
            "detectors": non_adaptive or {},
        },
    }


def test_adaptive_guard_evaluation_sets_detection(register, tmp_path):
    path = tmp_path / "guard-eval.json"
    path.write_text(
        json.dumps(
            _adaptive_eval(
                {
                    "mahalanobis": {"tpr": 0.82, "fpr": 0.01, "auroc": 0.93},
                    "squeeze": {"tpr": 0.40, "fpr": 0.01, "auroc": 0.70},
                    "extraction": {"tpr": 0.96, "fpr": 0.02},
                },
                # far better non-adaptive figures: they must not be what moves detection
                {"mahalanobis": {"tpr": 1.0, "fpr": 0.01}, "guard": {"tpr": 1.0, "fpr": 0.01}},
            )
        )
    )
    guard = load_guard_evaluation(path)
    result = update_from_report(register, make_report(), guard=guard, guard_path=path)
    eva = register.get("EVA-01")
    assert eva.detection == 4  # best matching adaptive detector: mahalanobis, TPR 0.82
    change = next(c for c in reversed(eva.history) if c.field == "detection")
    assert change.evidence.kind == "guard_evaluation" and change.evidence.sha256 == file_sha256(
        path
    )
    assert change.evidence.metric == "adaptive.mahalanobis.tpr"
    assert change.old == 8 and change.new == 4
    assert "adaptive attacker (orthogonal-pgd L∞ ε=0.1, 2×100 steps)" in change.reason
    assert register.get("EXT-01").detection == 2
    assert register.get("MIA-01").detection == 9  # no detector covers membership inference
    assert any(rid == "EXT-01" and c.field == "detection" for rid, c in result.changes)


@pytest.mark.parametrize(
    ("doc", "why"),
    [
        # a file of the old, unlabelled form: non-adaptive figures
        ({"detectors": {"mahalanobis": {"tpr": 0.99, "fpr": 0.01}}}, "no adaptive figures"),
        (
            {
                "non_adaptive": {"detectors": {"guard": {"tpr": 0.99, "fpr": 0.01}}},
                "adaptive": {"status": "not_measured", "reason": "the model has no gradients"},
            },
            "adaptive attacker was not measured: the model has no gradients",
        ),
    ],
)
def test_non_adaptive_figures_move_no_detection(register, tmp_path, doc, why):
    path = tmp_path / "guard-eval.json"
    path.write_text(json.dumps(doc))
    before = register.get("EVA-01").detection
    result = update_from_report(register, None, guard=load_guard_evaluation(path), guard_path=path)
    eva = register.get("EVA-01")
    assert eva.detection == before
    assert [c.evidence.kind for c in eva.history if c.field == "detection"] == ["profile"]
    assert not result.changes
    reason = dict(result.unmeasured)["EVA-01"]
    assert "detection not moved" in reason and "measured only non-adaptively" in reason
    assert why in reason


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{oops", r"not valid JSON"),
        ('{"tpr": 0.9}', r'expected a guard evaluation .* with \{"adaptive": \{"detectors"'),
        (
            '{"detectors": {"m": {"tpr": 1.5, "fpr": 0.01}}}',
            r"detectors.m.tpr: Input should be less than or equal to 1",
        ),
        ('{"detectors": {"m": {"fpr": 0.01}}}', r"detectors.m.tpr: Field required"),
    ],
)
def test_guard_evaluation_errors(tmp_path, content, message):
    path = tmp_path / "g.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_guard_evaluation(path)


def test_report_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"report not found: .*report.json: run `bastion assess"):
        load_report(tmp_path)
    (tmp_path / "report.json").write_text(json.dumps({"model": {"name": "m"}}))
    with pytest.raises(ConfigError, match=r"model.sha256: Field required"):
        load_report(tmp_path / "report.json")


def test_update_from_a_real_assessment(real_report, register):
    """A report produced by bastion.assess.runner.run_assessment moves the register."""
    report = load_report(real_report)
    asr = max(
        f.metrics["attack_success_rate"]
        for f in report.findings
        if "attack_success_rate" in f.metrics
    )
    result = update_from_report(register, report, report_path=real_report)
    eva = register.get("EVA-01")
    assert eva.occurrence == rate_to_occurrence(asr)
    assert eva.measured["evasion.attack_success_rate"] == pytest.approx(asr)
    assert register.updates[-1].sources[0].sha256 == file_sha256(real_report)
    moved = [c for c in eva.history if c.evidence and c.evidence.kind == "report"]
    assert len(moved) == (eva.occurrence != 6)  # the profile gave 6; a change only if it moved
    for c in moved:
        assert c.evidence.sha256 == file_sha256(real_report) and c.old == 6
    assert "MIA-01" in dict(result.unmeasured)  # evasion-only assessment


def test_membership_from_lowest_fpr_when_population_is_large(register):
    f = membership("lira-online", 0.05, 0.1)
    f.metrics["nonmembers"] = 5000.0
    update_from_report(register, make_report([f]))
    assert register.get("MIA-01").occurrence == tpr_to_occurrence(0.05, 0.001) == 6
