"""SARIF 2.1.0 export of an assessment: structure, levels, messages with budgets, and the
file `bastion assess` writes beside report.json."""

from __future__ import annotations

import json
import math

from bastion.assess.api import assess
from bastion.assess.schema import Budgets, Finding, SanityWarning, ThreatModel
from bastion.report.sarif import FILENAME, level, to_sarif, write_sarif
from tests.report.reports import evasion, extraction, make_report, membership, tiny_digits_model


def _report():
    curve = Finding(
        probe="evasion",
        attack="pgd-curve",
        params={"norm": "inf", "n": 120, "points": 3},
        metrics={
            "clean_accuracy": 0.95,
            "mean_robust_accuracy": 0.5,
            "eps_half_accuracy": math.inf,
        },
        severity=4.5,
        series={"eps": [0.05, 0.1, 0.2], "robust_accuracy": [0.8, 0.5, 0.2]},
    )
    sanity = Finding(probe="evasion", attack="sanity-checks", params={"eps": 0.1}, severity=0)
    return make_report(
        [
            evasion("fgsm", 0.9, 1.0),
            evasion("pgd", 0.2, 8.0),
            evasion("pgd", 0.6, 2.5, eps=0.05),
            curve,
            sanity,
            membership(0.6, 0.004, 3.0),
            extraction(0.9, 8.9),
        ],
        warnings=[SanityWarning(check="convergence", message="raise the budgets")],
        path="models/tiny/model.safetensors",
    )


def test_structure_and_rules():
    log = to_sarif(_report())
    assert log["version"] == "2.1.0" and "sarif-2.1.0" in log["$schema"]
    assert len(log["runs"]) == 1
    run = log["runs"][0]
    driver = run["tool"]["driver"]
    assert driver["name"] == "bastion-assess"
    ids = [r["id"] for r in driver["rules"]]
    assert len(ids) == len(set(ids))
    assert {
        "evasion/pgd",
        "evasion/fgsm",
        "membership/loss-threshold",
        "sanity/convergence",
    } <= set(ids)
    for res in run["results"]:
        assert driver["rules"][res["ruleIndex"]]["id"] == res["ruleId"]
        assert res["message"]["text"]
        assert res["level"] in {"none", "note", "warning", "error"}
        assert res["locations"]
    # one result per finding plus one per sanity warning; skipped probes are not results
    assert len(run["results"]) == 7 + 1
    assert run["properties"]["skipped"][0]["probe"] == "poisoning"
    assert not any(r["ruleId"].startswith("poisoning") for r in run["results"])
    pgd_rule = driver["rules"][ids.index("evasion/pgd")]
    assert pgd_rule["properties"]["security-severity"] == "8.0"  # the worst pgd finding
    assert pgd_rule["properties"]["risk"] == "EVA-01"
    assert driver["rules"][ids.index("extraction/knockoff-pool")]["properties"]["risk"] == "EXT-01"
    # strict JSON: no NaN/Infinity anywhere (eps_half_accuracy=inf is dropped from metrics)
    json.dumps(log, allow_nan=False)


def test_levels_and_messages():
    run = to_sarif(_report())["runs"][0]
    pgd = next(
        r
        for r in run["results"]
        if r["ruleId"] == "evasion/pgd" and r["properties"]["severity"] == 8.0
    )
    assert pgd["level"] == "error"
    assert "ε=0.1 L∞ (absolute)" in pgd["message"]["text"] and "n=120" in pgd["message"]["text"]
    # the measured accuracies and success rate, nothing else
    assert "from 95% to 20%" in pgd["message"]["text"] and "79%" in pgd["message"]["text"]
    fgsm = next(r for r in run["results"] if r["ruleId"] == "evasion/fgsm")
    assert fgsm["level"] == "note"
    weak_pgd = next(
        r
        for r in run["results"]
        if r["ruleId"] == "evasion/pgd" and r["properties"]["severity"] == 2.5
    )
    assert weak_pgd["level"] == "warning" and "ε=0.05" in weak_pgd["message"]["text"]
    sanity = next(r for r in run["results"] if r["ruleId"] == "evasion/sanity-checks")
    assert sanity["level"] == "none" and sanity["kind"] == "pass"
    warn = next(r for r in run["results"] if r["ruleId"] == "sanity/convergence")
    assert warn["level"] == "warning" and "raise the budgets" in warn["message"]["text"]
    loc = pgd["locations"][0]
    assert loc["physicalLocation"]["artifactLocation"]["uri"] == "models/tiny/model.safetensors"
    fps = {json.dumps(r["partialFingerprints"]) for r in run["results"]}
    assert len(fps) == len(run["results"])  # distinct findings, distinct fingerprints


def test_level_bands():
    assert [level(s) for s in (0, 0.5, 1.5, 3.9, 4, 10)] == [
        "none",
        "note",
        "warning",
        "warning",
        "error",
        "error",
    ]


def test_no_model_path_uses_logical_location(tmp_path):
    report = make_report([evasion("pgd", 0.2, 8.0)])
    path = write_sarif(report, tmp_path)
    log = json.loads(path.read_text())
    loc = log["runs"][0]["results"][0]["locations"][0]
    assert "physicalLocation" not in loc
    assert loc["logicalLocations"][0]["fullyQualifiedName"] == "tiny-cnn"


def test_assess_writes_sarif_beside_report(digits, tmp_path):
    tm = ThreatModel(
        eps=[0.1],
        attacks=["fgsm"],
        curve_attack="fgsm",
        curve_eps=[0.05, 0.1],
        budgets=Budgets(n_eval=60, pgd_steps=5, apgd_steps=5),
        probes=["evasion"],
    )
    out = assess(tiny_digits_model(digits), digits, tm, tmp_path / "run", record=False)
    sarif = out.json_path.parent / FILENAME
    assert sarif.is_file() and out.sarif_path == sarif
    log = json.loads(sarif.read_text())
    results = log["runs"][0]["results"]
    report = json.loads(out.json_path.read_text())
    assert len(results) == len(report["findings"]) + len(report["warnings"])
    assert {r["ruleId"] for r in results} >= {"evasion/fgsm", "evasion/fgsm-curve"}
