"""The plain-words summary: verdict, the most serious findings with their budgets, what they
mean, and controls linked to risks and to the recipe or gateway setting implementing them."""

from __future__ import annotations

import pytest
import yaml
from pydantic import BaseModel

from bastion.assess.schema import Finding
from bastion.defenses.recipes import parse_recipe
from bastion.gate.evaluate import evaluate
from bastion.gate.policy import policy_from_data
from bastion.report.controls import IMPLEMENTATIONS
from bastion.report.html import render_report
from bastion.report.summary import build_summary, most_serious
from bastion.risk.catalogue import load_catalogue
from bastion.serve.settings import ServeSettings
from tests.report.reports import evasion, extraction, make_report, membership


def _report():
    return make_report(
        [
            evasion("fgsm", 0.6, 3.7),
            evasion("pgd", 0.2, 7.9),
            evasion("ensemble", 0.1, 8.9),
            membership(0.62, 0.03, 4.1),
            extraction(0.93, 9.2),
            Finding(probe="evasion", attack="sanity-checks", params={"eps": 0.1}, severity=0),
        ],
        score=72.0,
    )


def test_most_serious_spans_probes_worst_first():
    top = most_serious(_report().findings)
    assert [(f.probe, f.attack) for f in top] == [
        ("extraction", "knockoff-pool"),
        ("evasion", "ensemble"),
        ("membership", "loss-threshold"),
    ]  # not three evasion attacks, and never the bookkeeping sanity-checks finding


def test_summary_words_come_from_the_data():
    s = build_summary(_report())
    assert s.verdict is None
    ext, ens, mia = s.top
    assert "93%" in ext.what and "1000 queries" in ext.exposure and ext.risk_id == "EXT-01"
    assert ens.budget.startswith("ε=0.1 L∞") and "n=120" in ens.budget
    assert "89%" in ens.exposure and ens.risk_id == "EVA-01"  # 1 − 0.1/0.95, measured
    assert "AUC 0.620" in mia.what and mia.risk_id == "MIA-01"
    assert "72/100" in s.headline
    assert any("poisoning" in n for n in s.not_measured)
    assert {r.id for r in s.risks} == {"EXT-01", "EVA-01", "MIA-01"}


def test_controls_link_risks_and_implementations():
    s = build_summary(_report())
    catalogue = {t.id: t for t in load_catalogue().threats}
    assert s.controls
    for c in s.controls:
        for rid in c.risk_ids:
            assert c.control_id in {x.id for x in catalogue[rid].controls}
    ids = [c.control_id for c in s.controls]
    assert len(ids) == len(set(ids))  # each control once, with every risk it treats
    rate = next(c for c in s.controls if c.control_id == "AML.M0004")
    assert set(rate.risk_ids) == {"EXT-01", "MIA-01"}
    ways = {w.example for c in s.controls for w in c.ways}
    assert "bastion harden --recipe trades" in ways  # evasion → adversarial training
    assert "bastion harden --recipe dp_sgd" in ways  # membership → DP-SGD
    assert "serve.yaml: rate_limit.requests_per_s: 5" in ways  # extraction → rate limits
    # the controls Bastion implements come first
    assert [bool(c.ways) for c in s.controls] == sorted(
        (bool(c.ways) for c in s.controls), reverse=True
    )


def _field_path_exists(model: type[BaseModel], path: str) -> bool:
    for part in path.split("."):
        field = model.model_fields.get(part)
        if field is None:
            return False
        model = field.annotation  # type: ignore[assignment]
    return True


@pytest.mark.parametrize("control", sorted(IMPLEMENTATIONS))
def test_every_implementation_is_real(control):
    for way in IMPLEMENTATIONS[control]:
        if way.kind == "harden":
            parse_recipe(way.how)  # raises on an unknown recipe
        elif way.kind == "gateway":
            assert _field_path_exists(ServeSettings, way.how), way.how
            section, key = way.how.split(".")
            value = yaml.safe_load(way.example.rsplit(": ", 1)[1])
            ServeSettings.model_validate({section: {key: value}})  # a valid value too
    used = {c.id for t in load_catalogue().threats for c in t.controls}
    assert control in used  # no implementation for a control the catalogue lacks


def test_verdict_from_the_policy():
    report = _report()
    pol = policy_from_data(
        {
            "name": "release",
            "rules": ["robust_accuracy(attack=pgd, eps=0.1) >= 0.7", "score <= 80"],
        },
        "policy.yaml",
    )
    s = build_summary(report, evaluate(pol, report))
    assert s.verdict is not None and not s.verdict.passed
    assert len(s.verdict.failed) == 1 and "robust_accuracy" in s.verdict.failed[0]
    assert s.headline.startswith("The model fails the policy release")
    ok = policy_from_data({"name": "lenient", "rules": ["score <= 80"]}, "p.yaml")
    assert build_summary(report, evaluate(ok, report)).verdict.passed


def test_html_opens_with_the_summary():
    report = _report()
    pol = policy_from_data({"name": "release", "rules": ["score <= 40"]}, "policy.yaml")
    html = render_report(report, decision=evaluate(pol, report))
    body = html.split("<body>")[1]
    assert body.index('id="summary"') < body.index("<h2>Findings</h2>")
    assert 'class="verdict fail"' in html and "score &lt;= 40" in html
    assert 'href="#risk-EVA-01"' in html and 'id="risk-EVA-01"' in html
    assert "bastion harden --recipe trades" in html
    assert "http" not in body.split("How to read")[0]  # self-contained: nothing fetched
    plain = render_report(report)
    assert "No release policy was given" in plain and 'class="verdict' not in plain


def test_empty_report_claims_nothing():
    s = build_summary(make_report([], score=0.0))
    assert s.top == [] and s.controls == []
    assert "nothing was measured" in s.headline


def test_report_text_is_escaped():
    report = make_report([evasion("pgd", 0.2, 7.9)], name="<script>alert(1)</script>")
    html = render_report(report)
    assert "<script>alert(1)" not in html and "&lt;script&gt;alert(1)" in html
