"""The LLM stage of `bastion demo`: the demo application's three weaknesses are found by
exactly their probes, and the firewall in front of it passes a benign question, refuses an
injection before the application and blocks the answer that leaks the system prompt."""

from __future__ import annotations

import json

from bastion.audit import AuditLog
from bastion.cli.demo import DemoContext
from bastion.cli.llm import DEMO_WEAKNESSES, demo_stage


def test_demo_stage_assesses_then_guards(tmp_path):
    ctx = DemoContext(out=tmp_path / "demo")
    demo_stage(ctx)
    (assess, a_outcome, a_path), (fw, f_outcome, f_path) = ctx.summary
    assert a_path.endswith("report.json")
    assert assess == "llm assess" and "3 of 8 probes found a weakness" in a_outcome
    assert {"leak", "documents", "markup"} == DEMO_WEAKNESSES
    report = json.loads((tmp_path / "demo" / "llm" / "assess" / "report.json").read_text())
    hit = {f["probe"] for f in report["findings"] if f["metrics"]["successes"] > 0}
    assert hit == {
        "llm-system-prompt-leakage",
        "llm-indirect-injection-document",
        "llm-insecure-output",
    }
    assert fw == "llm firewall"
    assert f_outcome == "benign 200; injection refused 400; leaking answer blocked 403"
    with AuditLog.open(f"sqlite:///{f_path}") as log:  # the three decisions, logged
        assert log.verify(integrity_only=True).ok
