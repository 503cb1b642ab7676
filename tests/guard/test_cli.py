"""`bastion guard fit|evaluate` end to end on a copy of the session's digits model."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from bastion.cli import build_app
from bastion.errors import ConfigError


@pytest.fixture()
def model_dir(digits_model_dir, tmp_path):
    out = tmp_path / "model"
    shutil.copytree(digits_model_dir, out)
    return out


def test_fit_then_evaluate(model_dir, tmp_path):
    runner = CliRunner()
    cfg = tmp_path / "guard.yaml"
    cfg.write_text("detectors:\n  reconstruction: {epochs: 5}\nextraction: {delta: 0.9}\n")
    res = runner.invoke(
        build_app(),
        ["guard", "fit", "--model", str(model_dir), "--fpr", "0.02", "--config", str(cfg)],
    )
    assert res.exit_code == 0, res.output
    assert "guard written to" in res.output and (model_dir / "guard.json").exists()
    out = tmp_path / "eval.json"
    res = runner.invoke(
        build_app(),
        ["guard", "evaluate", "--model", str(model_dir), "--out", str(out), "--n", "120"],
    )
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    na, ad = doc["non_adaptive"], doc["adaptive"]
    assert "detectors" not in doc and "attack" not in doc  # every figure says which attacker
    assert doc["target_fpr"] == 0.02 and na["attack"]["eps"] == 0.1
    assert na["kind"] == "non_adaptive" and ad["kind"] == "adaptive"
    for name in ("mahalanobis", "reconstruction", "zscore", "squeeze", "guard"):
        rates = na["detectors"][name]
        assert 0 <= rates["tpr"] <= 1 and 0 <= rates["fpr"] <= 1 and 0 <= rates["auroc"] <= 1
    assert na["detectors"]["mahalanobis"]["auroc"] > 0.9
    assert ad["status"] == "measured" and ad["attack"]["eps"] == 0.1
    assert ad["attack"]["norm"] == "inf" and ad["attack"]["steps"] == 100
    assert ad["detectors"]["guard"]["tpr"] < na["detectors"]["guard"]["tpr"]
    assert ad["guarded_robust_accuracy"] < na["guarded_robust_accuracy"]
    assert {"noise", "blur"} <= set(doc["shifts"])
    # calibrated on half the test split (no train manifest: disjointness unknown), and
    # those rows are not evaluated
    cal = doc["calibration"]
    assert cal["source"] == "test-split" and cal["disjoint_from_training"] is None
    assert cal["n"] == 225 and "unknown" in cal["how_known"]
    assert "are left out" in " ".join(doc["notes"])
    assert "non-adaptive" in res.output and "guarded" in res.output


def test_evaluate_without_guard_says_how_to_fit(model_dir, tmp_path):
    from bastion.guard import GuardNotFittedError

    res = CliRunner().invoke(
        build_app(),
        ["guard", "evaluate", "--model", str(model_dir), "--out", str(tmp_path / "e.json")],
    )
    assert isinstance(res.exception, GuardNotFittedError)
    assert "bastion guard fit --model" in str(res.exception)


def test_fit_without_provenance_data_asks_for_data(model_dir):
    (model_dir / "provenance.json").write_text("{}")
    res = CliRunner().invoke(build_app(), ["guard", "fit", "--model", str(model_dir)])
    assert isinstance(res.exception, ConfigError)
    assert "pass --data" in str(res.exception)


def test_bad_fpr_is_refused(model_dir):
    res = CliRunner().invoke(
        build_app(), ["guard", "fit", "--model", str(model_dir), "--fpr", "0.9"]
    )
    assert isinstance(res.exception, ConfigError) and "--fpr must be in" in str(res.exception)


def test_demo_stage_fits_and_reports(model_dir, digits, tmp_path):
    from bastion.cli.demo import DemoContext
    from bastion.cli.guard import demo_stage

    ctx = DemoContext(out=tmp_path / "demo", data=digits, model_dir=model_dir)
    demo_stage(ctx)
    assert (model_dir / "guard.json").exists()
    stage, outcome, path = ctx.summary[-1]
    assert path.endswith("guard_evaluation.json")
    assert stage == "guard" and "PGD ε=0.1" in outcome and "adaptive attacker" in outcome
    doc = json.loads((tmp_path / "demo" / "guard" / "guard_evaluation.json").read_text())
    assert doc["non_adaptive"]["detectors"]["guard"]["auroc"] > 0.9
    assert doc["adaptive"]["status"] == "measured"
