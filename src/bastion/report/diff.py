"""Two assessments compared: per finding and metric, what got better or worse.

Findings are matched by their identity (probe, attack and parameters, ``Finding.key``);
one left unmatched is matched by probe, attack and ε when that is unique, with a note that
its other parameters (budgets) differ. Each metric has a direction where Bastion knows
which way is better (robust accuracy up, attack success, AUC, fidelity down, ...); others
are reported as "changed". A comparison *regresses* when the score rises, a matched
finding's severity rises (beyond ``tolerance``), or B has a sanity warning A had not. A
finding only B has is "new" and one only A has is "gone" (not measured in B): neither is
a regression, since the other run did not measure it, but both are listed.

``bastion runs diff A B`` prints it; the report's "Since the previous assessment" section
renders it.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from bastion.assess.schema import Finding, Report

Status = Literal["better", "worse", "same", "changed", "new", "gone"]
TOLERANCE = 0.05  # severity (0–10) and score (0–100) moves smaller than this are "same"
METRIC_TOLERANCE = 1e-3

HIGHER_IS_BETTER = {
    "clean_accuracy",
    "robust_accuracy",
    "mean_robust_accuracy",
    "eps_half_accuracy",
    "victim_accuracy",
    "accuracy_change",
    "attack_accuracy",
    "large_eps_accuracy",
}
LOWER_IS_BETTER = {
    "attack_success_rate",
    "auc",
    "balanced_accuracy",
    "fidelity",
    "surrogate_accuracy",
    "transfer_success_rate",
    "tpr_at_fpr",
}
LOWER_PREFIXES = ("tpr_at_", "fidelity_at_")


class _Model(BaseModel):
    model_config = ConfigDict(ser_json_inf_nan="strings")


def better_direction(metric: str) -> Literal["higher", "lower"] | None:
    """Which way ``metric`` is better, or None when Bastion does not know."""
    if metric in HIGHER_IS_BETTER:
        return "higher"
    if metric in LOWER_IS_BETTER or metric.startswith(LOWER_PREFIXES):
        return "lower"
    return None


def _finite(v: float | None) -> bool:
    return v is not None and not math.isnan(v)


def judge(
    a: float | None,
    b: float | None,
    direction: Literal["higher", "lower"] | None,
    tolerance: float,
) -> Status:
    """How a value moved from ``a`` to ``b``."""
    if a is None:
        return "new"
    if b is None:
        return "gone"
    if a == b or (math.isnan(a) and math.isnan(b)):
        return "same"
    if not (_finite(a) and _finite(b)):
        return "changed"
    if not (math.isinf(a) or math.isinf(b)) and abs(b - a) <= tolerance:
        return "same"
    if direction is None:
        return "changed"
    up = b > a
    return "better" if up == (direction == "higher") else "worse"


class MetricChange(_Model):
    name: str
    a: float | None
    b: float | None
    status: Status

    @computed_field  # type: ignore[prop-decorator]
    @property
    def delta(self) -> float | None:
        if self.a is None or self.b is None or not (_finite(self.a) and _finite(self.b)):
            return None
        if math.isinf(self.a) or math.isinf(self.b):
            return None
        return self.b - self.a


class FindingChange(_Model):
    key: str
    probe: str
    attack: str
    eps: float | None = None
    severity_a: float | None
    severity_b: float | None
    status: Status
    metrics: list[MetricChange] = Field(default_factory=list)
    note: str = ""

    @property
    def label(self) -> str:
        eps = f" ε={self.eps:g}" if self.eps is not None else ""
        return f"{self.probe} · {self.attack}{eps}"


class RunRef(_Model):
    label: str
    model: str
    model_sha256: str
    dataset_sha256: str
    created: datetime
    score: float


class RunComparison(_Model):
    """B compared with A (A is the earlier or baseline run)."""

    a: RunRef
    b: RunRef
    tolerance: float = TOLERANCE
    score_status: Status
    findings: list[FindingChange] = Field(default_factory=list)
    warnings_added: list[str] = Field(default_factory=list)
    warnings_removed: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def regressions(self) -> list[str]:
        """One line per regression of B against A."""
        out = []
        if self.score_status == "worse":
            out.append(f"score {self.a.score:g} → {self.b.score:g}")
        for f in self.findings:
            if f.status == "worse":
                out.append(f"{f.label}: severity {f.severity_a:g} → {f.severity_b:g}")
        out += [f"new sanity warning {w}" for w in self.warnings_added]
        return out

    @computed_field  # type: ignore[prop-decorator]
    @property
    def improvements(self) -> list[str]:
        out = []
        if self.score_status == "better":
            out.append(f"score {self.a.score:g} → {self.b.score:g}")
        out += [
            f"{f.label}: severity {f.severity_a:g} → {f.severity_b:g}"
            for f in self.findings
            if f.status == "better"
        ]
        return out

    @computed_field  # type: ignore[prop-decorator]
    @property
    def regressed(self) -> bool:
        return bool(self.regressions)


def _ref(report: Report, label: str) -> RunRef:
    return RunRef(
        label=label,
        model=report.model.name,
        model_sha256=report.model.sha256,
        dataset_sha256=report.dataset.sha256,
        created=report.created,
        score=report.score,
    )


def _eps(f: Finding) -> float | None:
    v = f.params.get("eps")
    return float(v) if isinstance(v, (int, float)) else None


def _loose(f: Finding) -> tuple[str, str, float | None]:
    return (f.probe, f.attack, _eps(f))


def _pairs(a: list[Finding], b: list[Finding]) -> list[tuple[Finding | None, Finding | None, str]]:
    by_key_b = {f.key: f for f in b}
    pairs: list[tuple[Finding | None, Finding | None, str]] = []
    used: set[str] = set()
    left: list[Finding] = []
    for fa in a:
        fb = by_key_b.get(fa.key)
        if fb is not None and fb.key not in used:
            pairs.append((fa, fb, ""))
            used.add(fb.key)
        else:
            left.append(fa)
    rest_b = [f for f in b if f.key not in used]
    for fa in left:
        same = [f for f in rest_b if _loose(f) == _loose(fa)]
        if len(same) == 1 and sum(_loose(x) == _loose(fa) for x in left) == 1:
            pairs.append((fa, same[0], "matched by probe, attack and ε: other parameters differ"))
            rest_b.remove(same[0])
        else:
            pairs.append((fa, None, "not measured in B"))
    pairs += [(None, fb, "not measured in A") for fb in rest_b]
    return pairs


def _metrics(fa: Finding | None, fb: Finding | None) -> list[MetricChange]:
    ma = fa.metrics if fa else {}
    mb = fb.metrics if fb else {}
    names = list(dict.fromkeys([*ma, *mb]))
    return [
        MetricChange(
            name=n,
            a=ma.get(n),
            b=mb.get(n),
            status=judge(ma.get(n), mb.get(n), better_direction(n), METRIC_TOLERANCE),
        )
        for n in names
    ]


def compare_reports(
    a: Report,
    b: Report,
    *,
    label_a: str = "A",
    label_b: str = "B",
    tolerance: float = TOLERANCE,
) -> RunComparison:
    """Compare ``b`` with ``a``: severities and score with ``tolerance``, per-metric moves."""
    changes = []
    for fa, fb, note in _pairs(a.findings, b.findings):
        f = fb or fa
        assert f is not None
        changes.append(
            FindingChange(
                key=f.key,
                probe=f.probe,
                attack=f.attack,
                eps=_eps(f),
                severity_a=fa.severity if fa else None,
                severity_b=fb.severity if fb else None,
                status=judge(
                    fa.severity if fa else None, fb.severity if fb else None, "lower", tolerance
                ),
                metrics=_metrics(fa, fb),
                note=note,
            )
        )
    wa = {f"{w.check} ({w.probe})" for w in a.warnings}
    wb = {f"{w.check} ({w.probe})" for w in b.warnings}
    notes = []
    if a.model.name != b.model.name or a.model.sha256 != b.model.sha256:
        notes.append(
            f"models differ: {a.model.name} {a.model.sha256[:12]} → {b.model.name} {b.model.sha256[:12]}"
        )
    if a.dataset.sha256 != b.dataset.sha256:
        notes.append(
            f"datasets differ ({a.dataset.name} n={a.dataset.n} → {b.dataset.name} n={b.dataset.n}): "
            "metrics are not measured on the same points"
        )
    if a.threat_model != b.threat_model:
        notes.append("threat models differ: budgets or attacks changed between the runs")
    return RunComparison(
        a=_ref(a, label_a),
        b=_ref(b, label_b),
        tolerance=tolerance,
        score_status=judge(a.score, b.score, "lower", tolerance),
        findings=changes,
        warnings_added=sorted(wb - wa),
        warnings_removed=sorted(wa - wb),
        notes=notes,
    )
