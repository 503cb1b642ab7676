"""Gate evaluation: check every rule of a policy (all failures, never just the first).

A rule whose metric is not measured (no finding, a probe the report lists as not applicable
or not measured, no clean-accuracy baseline) never passes: it fails, or is skipped with
``if_missing: skip``, and its reason says why."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from bastion.assess.schema import Report, Skipped
from bastion.gate.comparison import AccuracyDrop, resolve_drop
from bastion.gate.metrics import GateInputs
from bastion.gate.policy import Policy
from bastion.risk.register import RiskRegister

Verdict = Literal["pass", "fail", "skip"]
TOLERANCE = 1e-9
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": lambda a, b: a >= b - TOLERANCE,
    "<=": lambda a, b: a <= b + TOLERANCE,
    ">": operator.gt,
    "<": operator.lt,
    "==": lambda a, b: abs(a - b) <= TOLERANCE,
    "!=": lambda a, b: abs(a - b) > TOLERANCE,
}


class RuleResult(BaseModel):
    name: str
    rule: str
    op: str
    threshold: float
    measured: float | None
    verdict: Verdict
    reason: str = ""
    matched: int = 0


class GateDecision(BaseModel):
    """The outcome of a gate run; ``passed`` is True when no rule failed."""

    policy: str
    policy_sha256: str
    passed: bool
    results: list[RuleResult]
    report_sha256: str | None = None
    model_sha256: str | None = None
    clean_accuracy_drop: AccuracyDrop | None = None
    skipped: list[Skipped] = Field(
        default_factory=list, description="probes the report did not run: never evidence"
    )
    created: datetime = Field(default_factory=lambda: datetime.now(UTC))

    @property
    def failures(self) -> list[RuleResult]:
        return [r for r in self.results if r.verdict == "fail"]

    def summary(self) -> str:
        counts = {v: sum(r.verdict == v for r in self.results) for v in ("pass", "fail", "skip")}
        word = "PASS" if self.passed else "FAIL"
        skipped = f", {counts['skip']} skipped" if counts["skip"] else ""
        return f"{word}: {counts['pass']}/{len(self.results)} rules hold{skipped}"


def evaluate(
    policy: Policy,
    report: Report | None,
    register: RiskRegister | None = None,
    *,
    report_sha256: str | None = None,
    comparison: Path | None = None,
    baseline: Path | None = None,
) -> GateDecision:
    """Evaluate every rule of ``policy``; a missing metric fails (or skips) its rule.

    ``comparison`` (a `bastion harden` comparison.json) or ``baseline`` (another report)
    give the clean-accuracy drop; without them it is looked up beside the assessed model."""
    wants_drop = any(
        r.comparison.metric.namespace is None and r.comparison.metric.name == "clean_accuracy_drop"
        for r in policy.rules
    )
    drop = None
    if comparison is not None or baseline is not None or wants_drop:
        drop = resolve_drop(report, comparison=comparison, baseline=baseline)
    inputs = GateInputs(report=report, register=register, drop=drop)
    results = []
    for rule in policy.rules:
        cmp = rule.comparison
        m = rule.measure(inputs)
        if m.value is None or math.isnan(m.value):
            verdict: Verdict = "skip" if rule.if_missing == "skip" else "fail"
            results.append(
                RuleResult(
                    name=rule.name,
                    rule=rule.text,
                    op=cmp.op,
                    threshold=cmp.threshold,
                    measured=None,
                    verdict=verdict,
                    reason=m.reason or "not measured",
                )
            )
            continue
        holds = _OPS[cmp.op](m.value, cmp.threshold)
        reason = m.reason if holds else f"{m.value:.4g} {cmp.op} {cmp.threshold:g} does not hold"
        if not holds and m.reason:
            reason += f" ({m.reason})"
        results.append(
            RuleResult(
                name=rule.name,
                rule=rule.text,
                op=cmp.op,
                threshold=cmp.threshold,
                measured=m.value,
                verdict="pass" if holds else "fail",
                reason=reason,
                matched=m.matched,
            )
        )
    return GateDecision(
        policy=policy.name,
        policy_sha256=policy.sha256,
        passed=not any(r.verdict == "fail" for r in results),
        results=results,
        report_sha256=report_sha256,
        model_sha256=report.model.sha256 if report else None,
        clean_accuracy_drop=drop if isinstance(drop, AccuracyDrop) else None,
        skipped=list(report.skipped) if report else [],
    )
