"""What a policy rule can measure, and how it is measured on a report and a register.

Every metric a rule may name is in :data:`FINDING_METRICS` or :data:`SPECIAL`; a name
outside them is a policy error that lists the valid ones. When several findings match a
rule, the **worst case** counts: the minimum of metrics where higher is better for the
defender (accuracies), the maximum of the others (attack success, AUC, TPR, fidelity, ε).
A metric no finding reports is *not measured*: the rule fails with that reason (or is
skipped with ``if_missing: skip``); it never crashes the gate.

A probe the report lists as skipped (not applicable, not measured, excluded) is never
evidence: a rule over its metrics is not measured, and the reason carries the skip reason.
``sanity_warnings`` is not measured when no probe that raises them (evasion, black-box,
membership) ran, so a model no attack could touch does not pass "no warnings" vacuously.

``tpr_at_fpr(x)`` reads both ``tpr_at_fpr_<x>`` and ``tpr_at_<100·x>%_fpr`` metric keys;
``poisoning.clean_accuracy_drop`` falls back to ``−accuracy_change``; ``dp.<key>`` falls
back to a ``dp: {<key>: …}`` section anywhere in the assessed model's provenance.json.
Plain ``clean_accuracy`` reads the evasion and black-box findings (a gradient-free model has
only the latter); ``clean_accuracy_drop`` comes from a hardening comparison or a baseline
report (:mod:`bastion.gate.comparison`).

LLM-application reports (`bastion llm assess`): ``<probe>.success_rate`` (e.g.
``llm-system-prompt-leakage.success_rate <= 0``), ``successes``, ``attempts``, ``requests``
and ``max_output_tokens`` per probe, filtered by ``attack=FAMILY``; ``llm.<metric>`` is the
worst case over every LLM probe that ran.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bastion.assess.schema import Finding, Report
from bastion.gate.comparison import AccuracyDrop
from bastion.gate.grammar import MetricCall, PolicyError, Value
from bastion.risk.evidence import accuracy_drop, tpr_points
from bastion.risk.register import STATUSES, RiskRegister
from bastion.risk.system import Layer

Agg = Literal["min", "max"]

# namespace (probe) → metric → aggregation (worst case for the defender)
FINDING_METRICS: dict[str, dict[str, Agg]] = {
    "evasion": {"robust_accuracy": "min", "clean_accuracy": "min", "attack_success_rate": "max"},
    "blackbox": {
        "robust_accuracy": "min",
        "clean_accuracy": "min",
        "attack_success_rate": "max",
        "median_queries": "min",
    },
    "membership": {"auc": "max", "tpr_at_fpr": "max", "balanced_accuracy": "max"},
    "extraction": {"fidelity": "max", "surrogate_accuracy": "max"},
    "poisoning": {
        "attack_success_rate": "max",
        "clean_accuracy_drop": "max",
        "clean_accuracy": "min",
        "accuracy_change": "min",
    },
    "dp": {"epsilon": "max", "delta": "max"},
}
# LLM-application probes (bastion.llm.probes.PROBES; a test keeps the two lists equal):
# each is its own namespace, and ``llm.`` means the worst case over all of them
LLM_PROBES = (
    "llm-system-prompt-leakage",
    "llm-prompt-injection",
    "llm-indirect-injection-document",
    "llm-indirect-injection-tool",
    "llm-sensitive-disclosure",
    "llm-insecure-output",
    "llm-excessive-agency",
    "llm-unbounded-consumption",
)
LLM_METRICS: dict[str, Agg] = {
    "success_rate": "max",
    "successes": "max",
    "attempts": "min",
    "requests": "max",
    "max_output_tokens": "max",
}
FINDING_METRICS["llm"] = dict(LLM_METRICS)
FINDING_METRICS.update({p: dict(LLM_METRICS) for p in LLM_PROBES})
# namespaces that read several probes' findings
NAMESPACE_PROBES: dict[str, tuple[str, ...]] = {"llm": LLM_PROBES}
# unqualified names mean the evasion probe, except those read from several probes
DEFAULT_NAMESPACE = "evasion"
PLAIN_PROBES: dict[str, tuple[str, ...]] = {"clean_accuracy": ("evasion", "blackbox")}
# probes that raise sanity warnings (a report where none ran has measured no warnings)
WARNING_PROBES = ("evasion", "blackbox", "membership")
RISK_FILTERS: dict[str, tuple[str, ...] | None] = {
    "priority": ("high", "medium", "low"),
    "status": STATUSES,
    "layer": Layer.__args__,
    "level": ("low", "medium", "high", "critical"),
    "id": None,
    "probe": None,
    "owner": None,
}
SPECIAL = ("score", "sanity_warnings", "severity", "count", "max_rpn", "clean_accuracy_drop")
TPR_PREFIX = "tpr_at_fpr_"


@dataclass
class Measured:
    value: float | None
    reason: str = ""
    matched: int = 0


@dataclass(frozen=True)
class GateInputs:
    """Everything a rule may measure: the report, the register and the clean-accuracy drop
    (or why there is none)."""

    report: Report | None = None
    register: RiskRegister | None = None
    drop: AccuracyDrop | str | None = None


Measure = Callable[[GateInputs], Measured]


def skip_reasons(report: Report, probes: tuple[str, ...]) -> str:
    """Why these probes did not run, from the report's skipped list ("" when it says nothing)."""
    parts = [
        f"{s.probe} {s.status.replace('_', ' ')}: {s.reason}"
        for s in report.skipped
        if s.probe in probes
    ]
    return "; ".join(parts)


def _no_findings(report: Report, probes: tuple[str, ...], extra: str = "") -> Measured:
    names = " or ".join(probes)
    why = skip_reasons(report, probes)
    tail = f" ({why})" if why else extra
    return Measured(None, f"not measured: the report has no {names} finding{tail}")


def _fmt(v: Value) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _same(key: str, a: object, b: Value) -> bool:
    """Does a finding's field value ``a`` match the rule's filter value ``b``?"""
    if isinstance(b, float):
        try:
            return math.isclose(float(a), b, rel_tol=1e-6, abs_tol=1e-9)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False
    sa, sb = str(a).lower(), str(b).lower()
    if key == "norm":  # "linf" and "inf", "l2" and "2" name the same norm
        sa, sb = sa.removeprefix("l"), sb.removeprefix("l")
    return sa == sb


def metric_value(f: Finding, key: str) -> float | None:
    """``f.metrics[key]``, reading TPR keys by their FPR (``tpr_at_fpr_0.001`` also finds
    ``tpr_at_0.1%_fpr``) and deriving ``clean_accuracy_drop`` from ``accuracy_change``."""
    if key in f.metrics:
        return f.metrics[key]
    if key.startswith(TPR_PREFIX):
        want = float(key.removeprefix(TPR_PREFIX))
        for fpr, tpr, _ in tpr_points(f.metrics):
            if math.isclose(fpr, want, rel_tol=1e-9):
                return tpr
        return None
    if key == "clean_accuracy_drop":
        return accuracy_drop(f.metrics)
    return None


def provenance_value(report: Report, section: str, key: str) -> float | None:
    """``section.key`` (e.g. ``dp.epsilon``) from the assessed model's provenance.json, found
    at any depth; None when the model directory or the value is not there."""
    if not report.model.path:
        return None
    path = Path(report.model.path) / "provenance.json"
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    stack = [doc]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            sub = node.get(section)
            if isinstance(sub, dict) and isinstance(sub.get(key), (int, float)):
                return float(sub[key])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return None


def resolve(call: MetricCall) -> Measure:
    """Validate a metric call and return the function that measures it."""
    if call.namespace is None and call.name in SPECIAL:
        return _special(call)
    if call.namespace is None and call.name in PLAIN_PROBES:
        if call.args:
            raise PolicyError(
                f"{call.name} takes only key=value filters, e.g. {call.name}(attack=pgd)"
            )
        probes = PLAIN_PROBES[call.name]
        return _finding_measure(
            probes, call.name, FINDING_METRICS[probes[0]][call.name], dict(call.kwargs)
        )
    ns = call.namespace or DEFAULT_NAMESPACE
    if ns not in FINDING_METRICS:
        raise PolicyError(
            f"unknown metric namespace {ns!r}: use one of {', '.join(FINDING_METRICS)} "
            f"(or a plain name: {', '.join(SPECIAL)}, {', '.join(FINDING_METRICS['evasion'])})"
        )
    table = FINDING_METRICS[ns]
    if call.name not in table:
        where = f"{ns}." if call.namespace else ""
        plain = "" if call.namespace else f", or {', '.join(SPECIAL)}"
        raise PolicyError(
            f"unknown metric {where}{call.name!r}: valid {ns} metrics are "
            f"{', '.join(f'{where}{m}' for m in table)}{plain}"
        )
    if call.name == "tpr_at_fpr":
        if len(call.args) != 1 or not isinstance(call.args[0], float) or not 0 < call.args[0] < 1:
            raise PolicyError(
                f"{ns}.tpr_at_fpr takes one false-positive rate in (0, 1), "
                f"e.g. {ns}.tpr_at_fpr(0.001)"
            )
        key = f"{TPR_PREFIX}{call.args[0]!r}"
    else:
        if call.args:
            raise PolicyError(
                f"{call.qualified} takes only key=value filters, e.g. "
                f"{call.qualified}(attack=pgd, eps=0.1)"
            )
        key = call.name
    probes = NAMESPACE_PROBES.get(ns, (ns,))
    return _finding_measure(probes, key, table[call.name], dict(call.kwargs))


def _finding_measure(
    probes: tuple[str, ...], key: str, agg: Agg, filters: dict[str, Value]
) -> Measure:
    ns = " or ".join(probes)

    def measure(inputs: GateInputs) -> Measured:
        report = inputs.report
        if report is None:
            return Measured(None, "not measured: no report given")
        findings = [f for f in report.findings if f.probe in probes]
        if not findings and probes == ("dp",) and not filters:
            value = provenance_value(report, "dp", key)
            if value is not None:
                return Measured(value, "from the model's provenance.json", 1)
        if not findings:
            extra = (
                " (a model trained without differential privacy has no ε)"
                if probes == ("dp",)
                else ""
            )
            return _no_findings(report, probes, extra)
        seen = set().union(*({"attack", *f.params} for f in findings))
        unknown = [k for k in filters if k not in seen]
        if unknown:
            return Measured(
                None,
                f"not measured: no {ns} finding has a parameter {', '.join(unknown)} "
                f"(parameters: {', '.join(sorted(seen))})",
            )
        matched = [f for f in findings if _matches(f, filters)]
        values = [v for f in matched if (v := metric_value(f, key)) is not None]
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return Measured(None, "not measured: " + _why_missing(ns, key, filters, findings))
        value = min(values) if agg == "min" else max(values)
        note = f"{agg} over {len(values)} findings" if len(values) > 1 else "1 finding"
        return Measured(value, note, len(values))

    return measure


def _matches(f: Finding, filters: dict[str, Value]) -> bool:
    fields = {"attack": f.attack, **f.params}
    return all(k in fields and _same(k, fields[k], v) for k, v in filters.items())


def _why_missing(ns: str, key: str, filters: dict[str, Value], findings: list[Finding]) -> str:
    with_key = [f for f in findings if metric_value(f, key) is not None]
    if not with_key:
        if key.startswith(TPR_PREFIX):
            fprs = sorted({fpr for f in findings for fpr, _, _ in tpr_points(f.metrics)})
            have = f"TPR only at FPR {', '.join(f'{x:g}' for x in fprs)}" if fprs else "no TPR"
            return f"the {ns} findings report {have}"
        return f"no {ns} finding reports {key}"
    wanted = ", ".join(f"{k}={_fmt(v)}" for k, v in filters.items())
    keys = [k for k in filters]
    measured = sorted(
        {
            ", ".join(f"{k}={({'attack': f.attack, **f.params}).get(k)}" for k in keys)
            for f in with_key
        }
    )
    return f"no {ns} finding with {wanted} reports {key} (measured: {'; '.join(measured)})"


def _special(call: MetricCall) -> Measure:
    name, kwargs = call.name, dict(call.kwargs)
    if name == "score":
        _no_args(call)
        return _score
    if name == "clean_accuracy_drop":
        _no_args(call)
        return _clean_accuracy_drop
    if name == "sanity_warnings":
        if call.args or set(kwargs) - {"check"}:
            raise PolicyError("sanity_warnings takes at most a check=NAME filter")

        def warnings(inputs: GateInputs) -> Measured:
            report = inputs.report
            if report is None:
                return Measured(None, "not measured: no report given")
            if not any(f.probe in WARNING_PROBES for f in report.findings):
                return _no_findings(report, WARNING_PROBES)
            ws = [w for w in report.warnings if "check" not in kwargs or w.check == kwargs["check"]]
            names = ", ".join(sorted({w.check for w in ws}))
            return Measured(float(len(ws)), names or "no sanity warnings", len(ws))

        return warnings
    if name == "severity":
        if call.args or set(kwargs) - {"probe", "attack"}:
            raise PolicyError("severity takes probe=NAME and attack=NAME filters only")

        def severity(inputs: GateInputs) -> Measured:
            report = inputs.report
            if report is None:
                return Measured(None, "not measured: no report given")
            fs = [f for f in report.findings if _matches_probe(f, kwargs)]
            if not fs:
                why = skip_reasons(report, (str(kwargs["probe"]),)) if "probe" in kwargs else ""
                return Measured(
                    None, "not measured: no finding matches" + (f" ({why})" if why else "")
                )
            return Measured(max(f.severity for f in fs), f"max over {len(fs)} findings", len(fs))

        return severity
    # count / max_rpn over the register
    if not call.args or call.args[0] != "risks" or len(call.args) != 1:
        raise PolicyError(
            f"{name} counts over the register: write {name}(risks, priority=high, ...)"
        )
    for key, value in kwargs.items():
        if key not in RISK_FILTERS:
            raise PolicyError(
                f"{name}(risks, ...): unknown filter {key!r}: use {', '.join(RISK_FILTERS)}"
            )
        allowed = RISK_FILTERS[key]
        if allowed is not None and str(value) not in allowed:
            raise PolicyError(
                f"{name}(risks, {key}={_fmt(value)}): {key} is one of {', '.join(allowed)}"
            )

    def over_risks(inputs: GateInputs) -> Measured:
        register = inputs.register
        if register is None:
            return Measured(None, "not measured: pass --register to check rules over the register")
        chosen = [
            r
            for r in register.risks
            if all(str(getattr(r, k)) == str(v) for k, v in kwargs.items())
        ]
        ids = ", ".join(r.id for r in chosen)
        if name == "count":
            return Measured(float(len(chosen)), ids or "none", len(chosen))
        if not chosen:
            return Measured(0.0, "no matching risks", 0)
        top = max(chosen, key=lambda r: r.rpn)
        return Measured(float(top.rpn), f"{top.id}", len(chosen))

    return over_risks


def _score(inputs: GateInputs) -> Measured:
    report = inputs.report
    if report is None:
        return Measured(None, "not measured: no report given")
    absent = sorted({s.probe for s in report.skipped} - {f.probe for f in report.findings})
    note = f"; not in it: {', '.join(absent)} (did not run)" if absent else ""
    return Measured(report.score, f"overall vulnerability score{note}", 1)


def _clean_accuracy_drop(inputs: GateInputs) -> Measured:
    drop = inputs.drop
    if isinstance(drop, AccuracyDrop):
        return Measured(drop.value, drop.source, 1)
    return Measured(None, f"not measured: {drop or 'no clean-accuracy baseline'}")


def _matches_probe(f: Finding, kwargs: dict[str, Value]) -> bool:
    return all(str(getattr(f, k)) == str(v) for k, v in kwargs.items())


def _no_args(call: MetricCall) -> None:
    if call.args or call.kwargs:
        raise PolicyError(f"{call.name} takes no arguments: write `{call.name} <= 40`")
