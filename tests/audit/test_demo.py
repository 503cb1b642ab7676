"""The audit stage of `bastion demo` logs the earlier stages' decisions, signs and verifies."""

from __future__ import annotations

import json
import time

from bastion.audit import AuditLog, SignedTreeHead, load_public_key
from bastion.cli.audit import demo_stage
from bastion.cli.demo import DemoContext


class FakeDecision:
    def model_dump(self, mode: str = "python") -> dict:
        return {"policy": "release", "passed": True}


def test_demo_stage_logs_signs_and_verifies(tmp_path):
    ctx = DemoContext(out=tmp_path)
    ctx.add("assess", "score 41.0", tmp_path / "assess")
    ctx.add("gate", "pass", tmp_path / "gate")
    ctx.extra["gate_decision"] = FakeDecision()
    start = time.perf_counter()
    demo_stage(ctx)
    assert time.perf_counter() - start < 5
    stage, outcome, path = ctx.summary[-1]
    assert path == str(tmp_path / "audit")
    assert stage == "audit" and "3 entries logged; 3 verified" in outcome
    head = SignedTreeHead.from_json((tmp_path / "audit" / "sth.json").read_text())
    assert head.verify(load_public_key(tmp_path / "audit" / "audit-pub.pem"))
    with AuditLog.open(ctx.extra["audit_db"]) as log:
        assert log.entry(0) == {
            "event": "gate_decision",
            "decision": {"policy": "release", "passed": True},
        }
        assert log.entry(2)["stage"] == "gate"
        assert log.verify(load_public_key(tmp_path / "audit" / "audit-pub.pem")).ok
    demo_stage(ctx)  # a second run appends to the same log
    assert "4 entries logged; 7 verified" in ctx.summary[-1][1]
    assert json.loads((tmp_path / "audit" / "sth.json").read_text())["tree_size"] == 7
