from __future__ import annotations

import json

from tests.cli_runner import run_main
from tests.llm.fake_llm import FakeLLM


def test_llm_assess_end_to_end(monkeypatch, capsys, app_yaml, tmp_path) -> None:
    monkeypatch.setenv("FAKE_LLM_KEY", "k-123456")
    out = tmp_path / "out"
    with FakeLLM({"leak", "documents"}, key="k-123456") as fake:
        code, stdout, err = run_main(
            monkeypatch,
            capsys,
            "llm",
            "assess",
            "--target",
            fake.url,
            "--llm-model",
            "shop",
            "--profile",
            app_yaml,
            "--api-key-env",
            "FAKE_LLM_KEY",
            "--out",
            out,
        )
    assert code == 0, err
    assert "k-123456" not in stdout + err
    report = json.loads((out / "report.json").read_text())
    hit = {f["probe"] for f in report["findings"] if f["metrics"]["successes"] > 0}
    assert hit == {"llm-system-prompt-leakage", "llm-indirect-injection-document"}
    assert report["model"]["capabilities"]["requests"] == fake.requests
    assert "k-123456" not in (out / "report.json").read_text()


def test_bastion_assess_takes_an_openai_target(monkeypatch, capsys, app_yaml, tmp_path) -> None:
    """`bastion assess --target openai+http://… --llm-model … --profile app.yaml` (issue 16)."""
    with FakeLLM({"ramble"}) as fake:
        code, stdout, err = run_main(
            monkeypatch,
            capsys,
            "assess",
            "--target",
            fake.url,
            "--llm-model",
            "m",
            "--profile",
            app_yaml,
            "--out",
            tmp_path / "o",
        )
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    hit = {f["probe"] for f in report["findings"] if f["metrics"]["successes"] > 0}
    assert hit == {"llm-unbounded-consumption"}
    assert "report.json" in stdout


def test_llm_assess_one_probe(monkeypatch, capsys, app_yaml, tmp_path) -> None:
    with FakeLLM(set()) as fake:
        code, _, err = run_main(
            monkeypatch,
            capsys,
            "llm",
            "assess",
            "--target",
            fake.url,
            "--llm-model",
            "m",
            "--profile",
            app_yaml,
            "--probe",
            "llm-excessive-agency",
            "--out",
            tmp_path / "o",
        )
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert {f["probe"] for f in report["findings"]} == {"llm-excessive-agency"}
    assert report["score"] == 0
