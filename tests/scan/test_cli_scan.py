"""`bastion scan` from the command line: exit codes, table, JSON and SARIF 2.1.0 output."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

from bastion.scan.findings import ScanReport
from tests.cli_runner import run_main


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


@pytest.fixture
def files(tmp_path):
    clean = tmp_path / "clean"
    clean.mkdir()
    torch.save({"w": torch.zeros(3)}, clean / "sd.pt")
    evil = tmp_path / "evil.pkl"
    evil.write_bytes(pickle.dumps(Payload(), protocol=4))
    custom = tmp_path / "custom.onnx"
    import onnx

    from tests.scan.test_formats import tiny_onnx

    onnx.save(tiny_onnx(domain="com.evil"), str(custom))
    return clean, evil, custom


def test_exit_codes(monkeypatch, capsys, files, tmp_path):
    clean, evil, custom = files
    code, out, err = run_main(monkeypatch, capsys, "scan", clean)
    assert code == 0 and "0 at or above high" in err
    code, out, err = run_main(monkeypatch, capsys, "scan", clean, evil)
    assert code == 1
    assert "critical" in out and "1 at or above high" in err
    # a low finding passes the default threshold and fails --fail-on low
    assert run_main(monkeypatch, capsys, "scan", custom)[0] == 0
    assert run_main(monkeypatch, capsys, "scan", custom, "--fail-on", "low")[0] == 1
    code, _, err = run_main(monkeypatch, capsys, "scan", tmp_path / "missing.pt")
    assert code == 2 and "path not found" in err
    code, _, err = run_main(monkeypatch, capsys, "scan", evil, "--fail-on", "severe")
    assert code == 2 and "severity" in err
    code, _, err = run_main(monkeypatch, capsys, "scan", evil, "--profile", "nope")
    assert code == 2 and "profile" in err
    assert run_main(monkeypatch, capsys, "scan")[0] == 2
    code, _, err = run_main(monkeypatch, capsys, "scan", evil, "--profile", "sklearn")
    assert code == 1 and "1 at or above high" in err  # a profile never admits os.system


def test_json_output_parses_into_the_report(monkeypatch, capsys, files, tmp_path):
    clean, evil, _ = files
    code, out, _ = run_main(monkeypatch, capsys, "scan", evil, clean, "--format", "json")
    assert code == 1
    report = ScanReport.model_validate_json(out)
    assert [r.path for r in report.files] == [str(evil), str(clean / "sd.pt")]
    assert report.files[0].findings and report.files[1].findings == []
    target = tmp_path / "out" / "report.json"
    code, out, _ = run_main(
        monkeypatch, capsys, "scan", clean, "--format", "json", "--output", target
    )
    assert code == 0 and out == ""
    assert ScanReport.model_validate_json(target.read_text()).files[0].formats == ["torch-zip"]


def test_sarif_output_structure(monkeypatch, capsys, files, tmp_path):
    clean, evil, custom = files
    target = tmp_path / "scan.sarif"
    code, _, _ = run_main(
        monkeypatch, capsys, "scan", evil, custom, clean, "--format", "sarif", "--output", target
    )
    assert code == 1
    log = json.loads(target.read_text())
    assert log["version"] == "2.1.0" and "sarif" in log["$schema"]
    (run,) = log["runs"]
    driver = run["tool"]["driver"]
    assert driver["name"] == "bastion-scan"
    rule_ids = [r["id"] for r in driver["rules"]]
    assert len(rule_ids) == len(set(rule_ids))
    levels = {r["id"]: r["defaultConfiguration"]["level"] for r in driver["rules"]}
    assert levels["onnx.custom-op"] == "note" and levels["pickle.global"] == "error"
    assert run["results"]
    for result in run["results"]:
        assert result["ruleId"] in rule_ids
        assert rule_ids[result["ruleIndex"]] == result["ruleId"]
        assert result["level"] in {"error", "warning", "note"} and result["message"]["text"]
        physical = result["locations"][0]["physicalLocation"]
        assert physical["artifactLocation"]["uri"].startswith("file://")
        if "region" in physical:
            assert isinstance(physical["region"]["byteOffset"], int)
    pickles = [r for r in run["results"] if r["ruleId"] == "pickle.global"]
    assert pickles[0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].endswith(
        "evil.pkl"
    )


def test_sarif_names_archive_members(tmp_path):
    import zipfile

    from bastion.scan.engine import scan_paths
    from bastion.scan.sarif import to_sarif

    path = tmp_path / "bundle.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("inner/model.pkl", pickle.dumps(Payload(), protocol=2))
    log = to_sarif(scan_paths([path]))
    located = [r for r in log["runs"][0]["results"] if "logicalLocations" in r["locations"][0]]
    assert located
    logical = located[0]["locations"][0]["logicalLocations"][0]
    assert logical["name"] == "inner/model.pkl"
    assert logical["fullyQualifiedName"] == f"{path}!inner/model.pkl"


def test_demo_stage_finds_the_planted_pickle_and_passes_the_model(tmp_path) -> None:
    """`bastion demo`'s scan stage: the demo model folder is clean, the planted pickle that
    calls a global outside the allowlist is a critical finding, and nothing is loaded."""
    import json

    import torch
    from safetensors.torch import save_file

    from bastion.cli.demo import DemoContext
    from bastion.cli.scan import demo_stage

    model = tmp_path / "model"
    model.mkdir()
    save_file({"w": torch.zeros(2, 2)}, str(model / "model.safetensors"))
    (model / "spec.json").write_text('{"name": "mlp"}')
    ctx = DemoContext(out=tmp_path / "demo", model_dir=model)
    demo_stage(ctx)
    stage, outcome, path = ctx.summary[-1]
    assert stage == "scan" and "pickle.global" in outcome and "print" in outcome
    report = json.loads(Path(path).read_text())
    by_file = {Path(f["path"]).name: f["findings"] for f in report["files"]}
    assert by_file["model.safetensors"] == [] and by_file["spec.json"] == []
    assert by_file["downloaded.pt"][0]["severity"] == "critical"
