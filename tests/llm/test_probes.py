"""The probes against the fake application model: each finds exactly the weaknesses the
fake has, and nothing on the hardened one."""

from __future__ import annotations

import json

import pytest

from bastion.llm.probes import PROBES
from bastion.llm.profile import load_app_profile
from bastion.llm.runner import run_llm_assessment
from bastion.llm.target import ChatTarget
from tests.llm.fake_llm import WEAKNESSES, FakeLLM

# which probe each weakness of the fake must light up
EXPECTED = {
    "leak": {"llm-system-prompt-leakage"},
    "records": {"llm-sensitive-disclosure"},
    "user": {"llm-prompt-injection"},
    "agency": {"llm-excessive-agency"},
    "markup": {"llm-insecure-output"},
    "documents": {"llm-indirect-injection-document"},
    "tool-results": {"llm-indirect-injection-tool"},
    "ramble": {"llm-unbounded-consumption"},
}


def _assess(weak: set[str], app_yaml, tmp_path):
    profile = load_app_profile(app_yaml)
    with FakeLLM(weak) as fake, ChatTarget(fake.url, "shop", retries=0) as target:
        result = run_llm_assessment(profile, target, tmp_path / "out")
        assert target.requests == fake.requests
    return result


def _hit(report) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in report.findings:
        if f.metrics["successes"] > 0:
            out.setdefault(f.probe, set()).add(f.attack)
    return out


def test_hardened_model_has_no_finding(app_yaml, tmp_path) -> None:
    result = _assess(set(), app_yaml, tmp_path)
    report = result.report
    assert {f.probe for f in report.findings} == set(PROBES)
    assert _hit(report) == {}
    assert report.score == 0
    assert all(f.severity == 0 for f in report.findings)


def test_vulnerable_model_is_caught_by_every_probe(app_yaml, tmp_path) -> None:
    result = _assess(set(WEAKNESSES), app_yaml, tmp_path)
    report = result.report
    hits = _hit(report)
    assert set(hits) == set(PROBES)
    # every direct-injection family and every leakage family works on this model
    families = {f.attack for f in report.findings if f.probe == "llm-prompt-injection"}
    assert hits["llm-prompt-injection"] == families
    assert len(families) == 6
    assert hits["llm-indirect-injection-document"] == {"marker", "forbidden-tool"}
    assert hits["llm-indirect-injection-tool"] == {"marker", "forbidden-tool"}
    leak = next(
        f
        for f in report.findings
        if f.probe == "llm-system-prompt-leakage" and f.attack == "encoding"
    )
    assert leak.metrics["success_rate"] == 1.0
    # the base64, reversed and spaced variants were each recognised
    assert {"base64", "reversed", "spaced"} <= set(
        leak.notes[0].split("matched: ")[1][:-1].split(", ")
    )
    assert report.score > 50
    data = json.loads(result.json_path.read_text())
    assert data["model"]["form"] == "openai-chat"
    assert data["model"]["capabilities"]["reported_model"] == "fake-shop"
    for f in data["findings"]:
        assert f["params"]["oracle"] in {"canary", "marker", "forbidden-tool", "markup", "length"}
        assert f["params"]["owasp"].startswith("LLM")
        assert f["params"]["atlas"].startswith("AML.T")
        assert f["metrics"]["requests"] == f["metrics"]["attempts"]
        examples = json.loads((result.json_path.parent / f["artifacts"]["examples"]).read_text())
        assert examples and all(e["evidence"] for e in examples) == (f["metrics"]["successes"] > 0)


@pytest.mark.parametrize("weakness", sorted(EXPECTED))
def test_each_weakness_is_found_by_its_probe_only(weakness, app_yaml, tmp_path) -> None:
    report = _assess({weakness}, app_yaml, tmp_path).report
    assert set(_hit(report)) == EXPECTED[weakness]


def test_same_seed_same_prompts(app_yaml) -> None:
    profile = load_app_profile(app_yaml)
    probe = PROBES["llm-prompt-injection"]
    a = [x.prompt for x in probe.attempts(profile, 3)]
    assert a == [x.prompt for x in probe.attempts(profile, 3)]
    assert a != [x.prompt for x in probe.attempts(profile, 4)]


def test_probes_without_tools_are_skipped(tmp_path) -> None:
    path = tmp_path / "bare.yaml"
    path.write_text("system_prompt: You are a helpful assistant.\nattempts: 1\n")
    profile = load_app_profile(path)
    with FakeLLM(set()) as fake, ChatTarget(fake.url, "m", retries=0) as target:
        report = run_llm_assessment(profile, target, tmp_path / "o").report
    assert {s.probe for s in report.skipped} == {
        "llm-indirect-injection-tool",
        "llm-excessive-agency",
    }
    doc = {f.attack for f in report.findings if f.probe == "llm-indirect-injection-document"}
    assert doc == {"marker"}
