"""LLM threats in the risk register: present only for LLM applications, and moved by the
LLM probes' measured success rates (a vulnerable application up, a hardened one down)."""

from __future__ import annotations

from bastion.llm.profile import load_app_profile
from bastion.llm.runner import run_llm_assessment
from bastion.llm.target import ChatTarget
from bastion.risk.evidence import update_from_report
from bastion.risk.register import build_register
from bastion.risk.system import SystemProfile
from tests.llm.fake_llm import WEAKNESSES, FakeLLM

LLM_IDS = {f"LLM-{i:02d}" for i in range(1, 13)}
UNMEASURED = {"LLM-09", "LLM-10", "LLM-11", "LLM-12"}  # no LLM probe measures them


def _system(kind: str) -> SystemProfile:
    return SystemProfile(
        name="shop-assistant",
        decision="answers customers' questions about orders",
        kind=kind,
        exposure="public_api",
        data_sources=["own"],
        wrong_answer_cost="moderate",
    )


def test_llm_threats_only_for_llm_applications() -> None:
    llm = {r.id for r in build_register(_system("llm_application")).risks}
    classifier = {r.id for r in build_register(_system("classifier")).risks}
    assert llm >= LLM_IDS
    assert not LLM_IDS & classifier


def _occurrences(weak: set[str], app_yaml, tmp_path) -> dict[str, int]:
    profile = load_app_profile(app_yaml)
    with FakeLLM(weak) as fake, ChatTarget(fake.url, "shop", retries=0) as target:
        report = run_llm_assessment(profile, target, tmp_path / "out").report
    register = build_register(_system("llm_application"))
    result = update_from_report(register, report)
    measured = LLM_IDS - UNMEASURED
    assert not [rid for rid, _ in result.unmeasured if rid in measured]
    return {r.id: r.occurrence for r in register.risks if r.id in LLM_IDS}


def test_probe_evidence_moves_the_llm_risks(app_yaml, tmp_path) -> None:
    vulnerable = _occurrences(set(WEAKNESSES), app_yaml, tmp_path / "v")
    hardened = _occurrences(set(), app_yaml, tmp_path / "h")
    assert set(vulnerable) == LLM_IDS
    for rid in LLM_IDS - UNMEASURED:
        assert vulnerable[rid] > hardened[rid], rid
        assert hardened[rid] == 1, rid
    for rid in UNMEASURED:  # no probe evidence: they keep their prior score, never lowered
        assert vulnerable[rid] == hardened[rid] > 1, rid
