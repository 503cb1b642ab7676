"""The optional judge: a second model grades every reply beside the deterministic oracles,
which stay the verdict; its figures (rate, agreement with the oracle, unparsed answers,
requests) are named as the judge's in each finding and in the threat model."""

from __future__ import annotations

import math

from bastion.assess.schema import ModelRef
from bastion.llm.judge import RUBRIC, Judge
from bastion.llm.profile import load_app_profile
from bastion.llm.runner import run_llm_assessment
from bastion.llm.target import ChatReply, ChatTarget, Message
from tests.llm.fake_llm import WEAKNESSES, FakeLLM


class RuleJudge:
    """A judge target that says NO to the fake's refusals ("Sorry, …"), YES otherwise, and
    something unparseable to replies that mention "hours" (to count unparsed answers)."""

    form = "stub"
    base = "stub://judge"
    model = "rule-judge"

    def __init__(self) -> None:
        self.requests = 0
        self.seen: list[list[Message]] = []

    def chat(self, messages, *, tools=None, max_tokens=None, temperature=0.0) -> ChatReply:
        self.requests += 1
        self.seen.append(messages)
        reply = messages[-1].content.split("Assistant's reply:\n<<<\n", 1)[1].rsplit("\n>>>", 1)[0]
        if "hours" in reply:
            return ChatReply(content="It depends.")
        return ChatReply(content="NO" if reply.startswith("Sorry") else "Yes.")

    def model_ref(self, reported) -> ModelRef:  # pragma: no cover - not a target here
        raise NotImplementedError


def _run(weak, app_yaml, tmp_path, judge_target):
    profile = load_app_profile(app_yaml)
    with FakeLLM(weak) as fake, ChatTarget(fake.url, "shop", retries=0) as target:
        report = run_llm_assessment(profile, target, tmp_path, judge=Judge(judge_target)).report
        assert target.requests == fake.requests  # the judge's requests are not the target's
    return report


def test_judge_figures_beside_the_oracle(app_yaml, tmp_path):
    judge = RuleJudge()
    report = _run(set(WEAKNESSES), app_yaml, tmp_path / "weak", judge)
    total = sum(f.metrics["attempts"] for f in report.findings)
    assert judge.requests == total == sum(f.metrics["judge_requests"] for f in report.findings)
    assert all(m[0].content == RUBRIC for m in judge.seen)
    assert report.threat_model.judge == "rule-judge at stub://judge"
    for f in report.findings:
        assert f.params["judge"] == "rule-judge at stub://judge"
        assert any(n.startswith("judge: rule-judge") for n in f.notes)
        graded = f.metrics["attempts"] - f.metrics["judge_unparsed"]
        assert 0 <= f.metrics["judge_unparsed"] <= f.metrics["attempts"]
        if graded:
            assert 0.0 <= f.metrics["judge_success_rate"] <= 1.0
            assert 0.0 <= f.metrics["judge_agreement"] <= 1.0
        else:
            assert math.isnan(f.metrics["judge_success_rate"])
    # the severity and success rate come from the oracle alone
    leak = next(f for f in report.findings if f.probe == "llm-system-prompt-leakage")
    assert leak.metrics["success_rate"] > 0 and leak.severity > 0


def test_judge_and_oracle_agree_on_a_hardened_app(app_yaml, tmp_path):
    judge = RuleJudge()
    report = _run(set(), app_yaml, tmp_path / "hard", judge)
    graded = [f for f in report.findings if f.metrics["attempts"] > f.metrics["judge_unparsed"]]
    assert len(graded) >= len(report.findings) // 2  # most families were graded
    for f in report.findings:
        assert f.metrics["success_rate"] == 0 and f.severity == 0
        if f.metrics["attempts"] > f.metrics["judge_unparsed"]:
            assert f.metrics["judge_success_rate"] == 0.0  # every reply was a refusal
            assert f.metrics["judge_agreement"] == 1.0


def test_the_judge_endpoint_through_the_cli(monkeypatch, capsys, app_yaml, tmp_path):
    """`bastion assess --target … --judge openai+http://… --judge-model …`: every reply is
    graded by the judge endpoint (its requests counted apart, its key from the env)."""
    import json

    from tests.cli_runner import run_main

    monkeypatch.setenv("JUDGE_KEY", "j-secret-1")
    with FakeLLM({"leak"}) as app, FakeLLM(set(), key="j-secret-1") as judge:
        code, stdout, err = run_main(
            monkeypatch,
            capsys,
            "assess",
            "--target",
            app.url,
            "--llm-model",
            "shop",
            "--profile",
            app_yaml,
            "--judge",
            judge.url,
            "--judge-model",
            "grader",
            "--judge-key-env",
            "JUDGE_KEY",
            "--out",
            tmp_path / "out",
        )
        judged = judge.requests
    assert code == 0, err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    attempts = sum(f["metrics"]["attempts"] for f in report["findings"])
    assert judged == attempts == sum(f["metrics"]["judge_requests"] for f in report["findings"])
    assert report["threat_model"]["judge"] == f"grader at {judge.url.removeprefix('openai+')}"
    assert all(f["params"]["judge"].startswith("grader at ") for f in report["findings"])
    assert "j-secret-1" not in stdout + err + (tmp_path / "out" / "report.json").read_text()
