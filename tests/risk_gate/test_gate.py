"""Gate decisions on synthetic reports: every rule checked, worst case aggregated,
missing metrics fail (or skip) with a reason, JUnit XML for CI."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest

from bastion.assess.schema import Finding
from bastion.gate.evaluate import evaluate
from bastion.gate.junit import to_junit
from bastion.gate.policy import policy_from_data

from .conftest import evasion, make_report


def decide(rules, report=None, register=None):
    return evaluate(policy_from_data(rules), report or make_report(), register)


def by_rule(decision):
    return {r.rule: r for r in decision.results}


def test_all_rules_hold():
    d = decide(["robust_accuracy(eps=0.1) >= 0.70", "score <= 40", "sanity_warnings == 0"])
    assert d.passed and [r.verdict for r in d.results] == ["pass"] * 3
    assert d.summary() == "PASS: 3/3 rules hold"


def test_every_failure_is_reported_not_just_the_first():
    d = decide(
        ["score <= 10", "clean_accuracy >= 0.9", "robust_accuracy >= 0.9", "sanity_warnings == 0"],
        make_report(warnings=2),
    )
    verdicts = {r.rule: r.verdict for r in d.results}
    assert verdicts == {
        "score <= 10": "fail",
        "clean_accuracy >= 0.9": "pass",
        "robust_accuracy >= 0.9": "fail",
        "sanity_warnings == 0": "fail",
    }
    assert not d.passed and len(d.failures) == 3
    assert "30 <= 10 does not hold" in by_rule(d)["score <= 10"].reason


def test_worst_case_aggregation_and_filters():
    d = by_rule(
        decide(
            [
                "robust_accuracy >= 0.1",  # min over every attack and ε: 0.40
                "robust_accuracy(eps=0.1) >= 0.1",  # min over fgsm/pgd at 0.1: 0.72
                "robust_accuracy(attack=fgsm, eps=0.1) >= 0.1",  # 0.80
                "attack_success_rate(eps=0.1) <= 1",  # max: pgd at 0.1
                "robust_accuracy(eps=1/10, norm=linf) >= 0.1",  # fraction and Linf spelling
                "membership.tpr_at_fpr(0.001) <= 1",  # max over loss-threshold and LiRA
                "membership.tpr_at_fpr(1e-2, attack=loss-threshold) <= 1",
            ]
        )
    )
    assert d["robust_accuracy >= 0.1"].measured == pytest.approx(0.20)
    assert d["robust_accuracy >= 0.1"].matched == 3
    assert d["robust_accuracy(eps=0.1) >= 0.1"].measured == pytest.approx(0.72)
    assert d["robust_accuracy(attack=fgsm, eps=0.1) >= 0.1"].measured == pytest.approx(0.80)
    assert d["attack_success_rate(eps=0.1) <= 1"].measured == pytest.approx(1 - 0.72 / 0.95)
    assert d["robust_accuracy(eps=1/10, norm=linf) >= 0.1"].measured == pytest.approx(0.72)
    assert d["membership.tpr_at_fpr(0.001) <= 1"].measured == pytest.approx(0.004)
    assert d["membership.tpr_at_fpr(1e-2, attack=loss-threshold) <= 1"].measured == pytest.approx(
        0.012
    )


def test_tpr_keys_in_both_spellings():
    f = Finding(probe="membership", attack="lira", metrics={"tpr_at_fpr_0.001": 0.05}, severity=1)
    d = decide(["membership.tpr_at_fpr(0.001) <= 0.01"], make_report([f]))
    assert d.results[0].measured == pytest.approx(0.05) and not d.passed


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (
            "robust_accuracy(attack=ensemble, eps=0.1) >= 0.7",
            r"not measured: no evasion finding with attack=ensemble, eps=0.1 reports robust_accuracy "
            r"\(measured: attack=fgsm, eps=0.1; attack=pgd, eps=0.1; attack=pgd, eps=0.2\)",
        ),
        (
            "robust_accuracy(atack=pgd) >= 0.7",
            r"not measured: no evasion finding has a parameter atack \(parameters: attack, eps, n, norm\)",
        ),
        (
            "membership.tpr_at_fpr(0.0001) <= 0.01",
            r"not measured: the membership findings report TPR only at FPR 0.001, 0.01",
        ),
        ("extraction.fidelity <= 0.9", r"not measured: the report has no extraction finding"),
        (
            "dp.epsilon <= 8",
            r"not measured: the report has no dp finding \(a model trained "
            r"without differential privacy has no ε\)",
        ),
        (
            "count(risks, priority=high, status=open) == 0",
            r"not measured: pass --register to check rules over the register",
        ),
    ],
)
def test_missing_metric_fails_with_a_reason(rule, reason):
    d = decide([rule])
    r = d.results[0]
    assert r.verdict == "fail" and r.measured is None and not d.passed
    assert re.search(reason, r.reason), r.reason


def test_if_missing_skip_does_not_block():
    d = decide([{"rule": "dp.epsilon <= 8", "if_missing": "skip"}, "score <= 40"])
    assert d.passed and [r.verdict for r in d.results] == ["skip", "pass"]
    assert d.summary() == "PASS: 1/2 rules hold, 1 skipped"


def test_dp_epsilon_from_a_finding_and_from_provenance(tmp_path):
    dp = Finding(probe="dp", attack="dp-sgd", metrics={"epsilon": 6.5, "delta": 1e-5}, severity=0)
    d = decide(["dp.epsilon <= 8"], make_report([dp]))
    assert d.passed and d.results[0].measured == 6.5
    (tmp_path / "provenance.json").write_text(
        json.dumps({"recipe": {"steps": [{"name": "dp_sgd", "dp": {"epsilon": 9.25}}]}})
    )
    d = decide(["dp.epsilon <= 8"], make_report([], model_path=str(tmp_path)))
    assert not d.passed and d.results[0].measured == 9.25
    assert "provenance.json" in d.results[0].reason


def test_poisoning_drop_is_derived_from_accuracy_change():
    flip = Finding(
        probe="poisoning",
        attack="label-flip",
        metrics={"clean_accuracy": 0.80, "accuracy_change": -0.15},
        severity=3,
    )
    d = decide(["poisoning.clean_accuracy_drop(attack=label-flip) <= 0.05"], make_report([flip]))
    assert d.results[0].measured == pytest.approx(0.15) and not d.passed


def test_register_rules(register):
    rules = [
        "count(risks, priority=high, status=open) == 0",
        "count(risks, layer=data) >= 1",
        "max_rpn(risks, status=open) <= 1000",
    ]
    d = by_rule(decide(rules, register=register))
    high_open = [r.id for r in register.risks if r.priority == "high" and r.status == "open"]
    assert d[rules[0]].measured == len(high_open) > 0 and d[rules[0]].verdict == "fail"
    assert all(i in d[rules[0]].reason for i in high_open)
    assert d[rules[1]].measured == sum(r.layer == "data" for r in register.risks)
    assert d[rules[2]].measured == max(r.rpn for r in register.risks)
    for rid in high_open:
        register.set_status(rid, "accepted", reason="compensating control outside the model")
    assert decide(rules[:1], register=register).passed


def test_sanity_warning_filter_and_severity():
    d = by_rule(
        decide(
            ["sanity_warnings(check=check1) == 0", "severity(probe=evasion) <= 10"],
            make_report(warnings=2),
        )
    )
    assert d["sanity_warnings(check=check1) == 0"].measured == 1
    assert d["severity(probe=evasion) <= 10"].measured == pytest.approx(10 * (1 - 0.20 / 0.95))


def test_tolerance_on_boundaries():
    report = make_report([evasion("pgd", 0.1, 0.7)])
    assert decide(["robust_accuracy >= 0.70", "robust_accuracy == 0.7"], report).passed
    assert not decide(["robust_accuracy > 0.70"], report).passed


def test_junit_xml_for_ci():
    d = decide(
        [
            "score <= 40",
            "score <= 10",
            {"rule": "dp.epsilon <= 8", "if_missing": "skip"},
        ]
    )
    root = ET.fromstring(to_junit(d))
    suite = root.find("testsuite")
    assert (
        suite.get("tests") == "3" and suite.get("failures") == "1" and suite.get("skipped") == "1"
    )
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert (
        cases["score <= 10"].find("failure").get("message")
        == "30 <= 10 does not hold (overall vulnerability score)"
    )
    assert cases["dp.epsilon <= 8"].find("skipped") is not None
    assert cases["score <= 40"].find("failure") is None
