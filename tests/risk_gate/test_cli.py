"""`bastion risk|gate|attest|keys signing-init` through the real CLI app, and the demo stage."""

from __future__ import annotations

import json
import stat
import sys
import time

import pytest
from typer.testing import CliRunner

from bastion.cli import build_app
from bastion.errors import ConfigError
from bastion.gate.grammar import PolicyError
from bastion.risk.evidence import file_sha256

from .conftest import EXAMPLE_POLICY, EXAMPLE_SYSTEM, make_report, write_report

runner = CliRunner()


def run(*args):
    return runner.invoke(build_app(), [str(a) for a in args])


def test_risk_commands(tmp_path):
    reg = tmp_path / "reg.json"
    r = run("risk", "init", "--system", EXAMPLE_SYSTEM, "--out", reg)
    assert r.exit_code == 0, r.output
    assert json.loads(reg.read_text())["system"]["name"] == "cheque-digit-reader"
    r = run("risk", "init", "--system", EXAMPLE_SYSTEM, "--out", reg)
    assert isinstance(r.exception, ConfigError) and "pass --force" in str(r.exception)

    report = write_report(make_report(), tmp_path / "assess" / "report.json")
    guard = tmp_path / "guard.json"
    guard.write_text(
        json.dumps(
            {"adaptive": {"detectors": {"mahalanobis": {"tpr": 0.9, "fpr": 0.01, "auroc": 0.95}}}}
        )
    )
    r = run(
        "risk", "update", "-r", reg, "--report", report.parent, "--guard-eval", guard, "--by", "ci"
    )
    assert r.exit_code == 0, r.output
    data = json.loads(reg.read_text())
    eva = next(x for x in data["risks"] if x["id"] == "EVA-01")
    kinds = {c["evidence"]["kind"] for c in eva["history"]}
    assert {"profile", "report", "guard_evaluation"} <= kinds and eva["detection"] == 3

    r = run("risk", "update", "-r", reg)
    assert isinstance(r.exception, ConfigError) and "pass --report and/or --guard-eval" in str(
        r.exception
    )
    naive = {"non_adaptive": {"detectors": {"extraction-prada": {"tpr": 0.9, "fpr": 0.01}}}}
    guard.write_text(json.dumps(naive))
    r = run("risk", "update", "-r", reg, "--guard-eval", guard)  # non-adaptive: no change
    assert r.exit_code == 0, r.output
    assert "EXT-01: unchanged (detection not moved" in " ".join(r.output.split())
    ext = next(x for x in json.loads(reg.read_text())["risks"] if x["id"] == "EXT-01")
    assert ext["detection"] == 8
    adaptive = {"adaptive": {"detectors": {"extraction-prada": {"tpr": 0.5, "fpr": 0.01}}}}
    guard.write_text(json.dumps(adaptive))
    r = run("risk", "update", "-r", reg, "--guard-eval", guard)  # detector rates alone
    assert r.exit_code == 0, r.output
    ext = next(x for x in json.loads(reg.read_text())["risks"] if x["id"] == "EXT-01")
    assert ext["detection"] == 6 and ext["history"][-1]["evidence"]["kind"] == "guard_evaluation"

    r = run("risk", "set", "EVA-01", "-r", reg, "--status", "accepted")
    assert isinstance(r.exception, ConfigError) and "needs a reason" in str(r.exception)
    r = run(
        "risk",
        "set",
        "EVA-01",
        "-r",
        reg,
        "--status",
        "mitigated",
        "--reason",
        "PGD-AT",
        "--owner",
        "alice",
        "--control",
        "AML.M0003",
    )
    assert r.exit_code == 0, r.output
    assert "EVA-01: owner alice, status mitigated" in r.output

    assert run("risk", "show", "-r", reg, "--sort", "rpn").exit_code == 0
    r = run("risk", "show", "-r", reg, "--sort", "colour")
    assert "unknown sort 'colour'" in str(r.exception)

    assert run("risk", "export", "-r", reg, "--out", tmp_path / "r.csv").exit_code == 0
    assert (tmp_path / "r.csv").read_text().startswith("id,title,layer,owner,status")
    assert (
        run("risk", "export", "-r", reg, "--out", tmp_path / "r.txt", "--format", "json").exit_code
        == 0
    )
    assert json.loads((tmp_path / "r.txt").read_text())["risks"][0]["rpn"] > 0
    r = run("risk", "export", "-r", reg, "--out", tmp_path / "r.xlsx")
    assert "unknown export format 'xlsx'" in str(r.exception)

    r = run("risk", "report", "-r", reg, "--out", tmp_path / "risk.html")
    assert r.exit_code == 0 and 'id="heat-map"' in (tmp_path / "risk.html").read_text()


def test_gate_exit_codes_and_junit(tmp_path):
    report = write_report(make_report(), tmp_path / "report.json")
    good = tmp_path / "good.yaml"
    good.write_text("rules:\n  - robust_accuracy(eps=0.1) >= 0.7\n  - score <= 40\n")
    r = run("gate", "--report", report, "--policy", good, "--junit", tmp_path / "j.xml")
    assert r.exit_code == 0, r.output
    assert "PASS" in r.output and 'failures="0"' in (tmp_path / "j.xml").read_text()

    reg = tmp_path / "reg.json"
    run("risk", "init", "--system", EXAMPLE_SYSTEM, "--out", reg)
    r = run(
        "gate",
        "--report",
        report,
        "--policy",
        EXAMPLE_POLICY,
        "--register",
        reg,
        "--junit",
        tmp_path / "j2.xml",
        "--json",
        tmp_path / "d.json",
    )
    assert r.exit_code == 1, r.output
    assert "FAIL" in r.output
    decision = json.loads((tmp_path / "d.json").read_text())
    assert decision["passed"] is False
    failed = [x["name"] for x in decision["results"] if x["verdict"] == "fail"]
    assert "no open high-priority risks" in failed
    assert 'failures="' in (tmp_path / "j2.xml").read_text()


def test_gate_policy_typo_is_a_user_error(tmp_path, monkeypatch, capsys):
    report = write_report(make_report(), tmp_path / "report.json")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rules:\n  - robust_acc >= 0.7\n")
    r = run("gate", "--report", report, "--policy", bad)
    assert isinstance(r.exception, PolicyError)
    assert "valid evasion metrics are robust_accuracy" in str(r.exception)
    # through `bastion` itself: one line on stderr and exit code 2
    from bastion.cli import main

    monkeypatch.setattr(
        sys, "argv", ["bastion", "gate", "--report", str(report), "--policy", str(bad)]
    )
    with pytest.raises(SystemExit) as info:
        main()
    assert info.value.code == 2
    assert "unknown metric 'robust_acc'" in capsys.readouterr().err


def test_keys_attest_and_verify(tmp_path, model_copy, monkeypatch):
    key = tmp_path / "k" / "signing.key"
    r = run("keys", "signing-init", "--out", key)
    assert r.exit_code == 0, r.output
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in r.output  # never printed
    report = make_report(
        model_sha=file_sha256(model_copy / "model.safetensors"), model_path=str(model_copy)
    )
    report_path = write_report(report, tmp_path / "assess" / "report.json")
    r = run("attest", "--report", report_path.parent, "--policy", EXAMPLE_POLICY, "--key", key)
    assert r.exit_code == 0, r.output
    att = tmp_path / "assess" / "attestation.dsse.json"
    assert att.is_file()
    pub = key.with_suffix(".pub")
    r = run("attest", "verify", att, "--public-key", pub)
    assert r.exit_code == 0, r.output
    assert "attestation verified" in r.output
    r = run("attest", "verify", att, "--public-key", pub, "--require-pass")
    assert r.exit_code == 1
    (model_copy / "spec.json").write_text((model_copy / "spec.json").read_text() + " ")
    r = run("attest", "verify", att, "--public-key", pub)
    assert r.exit_code == 1
    assert "model/spec.json changed since signing" in r.output
    r = run("attest", "--policy", EXAMPLE_POLICY)
    assert isinstance(r.exception, ConfigError) and "needs --report and --policy" in str(
        r.exception
    )
    key.chmod(0o644)
    r = run("attest", "--report", report_path, "--policy", EXAMPLE_POLICY, "--key", key)
    assert "accessible by group or others" in str(r.exception)


def test_demo_stage(tmp_path, digits, digits_model_dir, real_report):
    from bastion.cli.demo import DemoContext
    from bastion.cli.gate import demo_stage
    from bastion.gate.attest import verify_attestation
    from bastion.gate.keys import load_public_key

    ctx = DemoContext(
        out=tmp_path, data=digits, model_dir=digits_model_dir, report_path=real_report
    )
    start = time.perf_counter()
    demo_stage(ctx)
    assert time.perf_counter() - start < 10
    stages = [row[0] for row in ctx.summary]
    assert stages == ["risk", "gate", "attest"]
    assert "verified" in ctx.summary[2][1]
    out = tmp_path / "gate"
    for name in (
        "register.json",
        "risk-report.html",
        "gate-junit.xml",
        "gate.json",
        "attestation.dsse.json",
        "throwaway-keys/signing.key",
    ):
        assert (out / name).is_file(), name
    pub = load_public_key(out / "throwaway-keys" / "signing.pub")
    assert verify_attestation(out / "attestation.dsse.json", pub).ok
    reg = json.loads((out / "register.json").read_text())
    assert reg["updates"][-1]["sources"][0]["sha256"] == file_sha256(real_report)
    eva = next(r for r in reg["risks"] if r["id"] == "EVA-01")
    assert "evasion.attack_success_rate" in eva["measured"]
    assert next(r for r in reg["risks"] if r["id"] == "ART-01")["status"] == "mitigated"
