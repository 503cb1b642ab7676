"""Evidence moves the scores: measured attack results set occurrence, measured detector
rates set detection. Every change is kept with the file, its SHA-256, the metric and the
value that caused it.

Occurrence (1–10) per catalogue ``evidence.mapping`` (docs/risk.md):

- ``rate``: ``1 + round(9 · r)`` where r is the worst (highest) attack success rate over the
  matching findings (evasion, black-box evasion);
- ``backdoor``: as ``rate`` on the backdoor success beyond what the trigger does to a
  cleanly trained model, ``(asr − clean_model_success_rate) / (1 − clean_model_success_rate)``;
- ``membership``: per finding, TPR at the lowest reported FPR at which at least one
  non-member can be a false positive (FPR × non-members ≥ 1; 1 % on digits' 450),
  ``1 + round(3 · log10(TPR / FPR))`` clipped to 1–10; the worst finding counts;
- ``fidelity``: extraction agreement above chance, ``r = (f − 1/K) / (1 − 1/K)`` for K
  classes, then as ``rate``; the best surrogate (highest fidelity, any budget) counts;
- ``drop``: label-flip clean-accuracy drop, ``r = min(1, drop / 0.3)``, then as ``rate``.

Detection (1–10) from a guard evaluation's **adaptive** figures only
(``adaptive.detectors``: detection under an attacker that knows every detector and its
threshold): among the detectors whose name matches the risk's ``detectors`` patterns, the one
with the highest TPR at its calibrated FPR sets ``detection_from_tpr(tpr, fpr)``.
Non-adaptive figures (``non_adaptive``, or the unlabelled ``detectors`` of older files) come
from attackers that do not know the detectors; they say nothing about one who does, so they
move no detection score and the risk is listed as unchanged with that reason.

A risk marked *mitigated* whose measured occurrence rises is reopened: the evidence no
longer supports the mitigation. Accepted risks keep their status (a person decided).
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bastion.assess.schema import Finding, Report
from bastion.config import describe_validation_error
from bastion.errors import ConfigError
from bastion.models.loaded import file_sha256
from bastion.risk import scoring
from bastion.risk.register import Change, Evidence, Risk, RiskRegister, UpdateRecord

log = logging.getLogger(__name__)
DROP_FULL_SCALE = 0.3


class DetectorRates(BaseModel):
    """One detector's rates on attacked inputs at its calibrated false-positive rate."""

    model_config = ConfigDict(extra="allow")

    tpr: float = Field(ge=0, le=1)
    fpr: float = Field(ge=0, le=1)
    auroc: float | None = Field(None, ge=0, le=1)


class AttackFigures(BaseModel):
    """One attacker's figures in a guard evaluation (``adaptive`` or ``non_adaptive``)."""

    model_config = ConfigDict(extra="allow")

    status: Literal["measured", "not_measured"] = "measured"
    reason: str = ""
    attack: dict[str, Any] = Field(default_factory=dict)
    detectors: dict[str, DetectorRates] = Field(default_factory=dict)

    def describe(self) -> str:
        """The attack and its budget, e.g. ``orthogonal-pgd L∞ ε=0.1, 2×100 steps``."""
        a = self.attack
        text = str(a.get("name", "attack"))
        if "eps" in a:
            norm = "∞" if str(a.get("norm", "inf")) == "inf" else str(a["norm"])
            text += f" L{norm} ε={a['eps']}"
        if "steps" in a:
            text += f", {a.get('restarts', 1)}×{a['steps']} steps"
        elif "queries" in a:
            text += f", {a['queries']} queries"
        return text


class GuardEvaluation(BaseModel):
    """The fields of a `bastion guard evaluate` JSON that the register reads: the
    ``adaptive`` attacker's figures (the only ones that move detection) and the
    ``non_adaptive`` ones; ``detectors`` is the unlabelled, non-adaptive form of older
    files."""

    model_config = ConfigDict(extra="allow")

    adaptive: AttackFigures | None = None
    non_adaptive: AttackFigures | None = None
    detectors: dict[str, DetectorRates] | None = None

    def adaptive_rates(self) -> tuple[dict[str, DetectorRates], str]:
        """The adaptive detector rates, or ({}, why there are none)."""
        a = self.adaptive
        if a is None:
            return {}, (
                "the guard evaluation has no adaptive figures (only detection of attacks that "
                "do not know the detectors, which moves no detection score): rerun "
                "`bastion guard evaluate` (adaptive by default)"
            )
        if a.status != "measured":
            return {}, f"the adaptive attacker was not measured: {a.reason}"
        return a.detectors, ""

    def non_adaptive_rates(self) -> dict[str, DetectorRates]:
        if self.non_adaptive is not None:
            return self.non_adaptive.detectors
        return dict(self.detectors or {})


def load_report(path: str | Path) -> Report:
    """Read report.json (or a directory holding one) into a :class:`Report`."""
    path = Path(path)
    if path.is_dir():
        path = path / "report.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"report not found: {path}: run `bastion assess ... --out DIR`") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc})") from None
    if isinstance(data, dict):
        for f in data.get("findings") or []:
            _nulls_to_nan(f)
    try:
        return Report.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(path))) from None


def _nulls_to_nan(finding: object) -> None:
    """JSON has no Infinity/NaN: pydantic writes them as null. Read such a metric (or curve
    point) back as NaN, which the gate and the register treat as not measured."""
    if not isinstance(finding, dict):
        return
    metrics = finding.get("metrics")
    if isinstance(metrics, dict):
        for k, v in metrics.items():
            if v is None:
                metrics[k] = math.nan
    series = finding.get("series")
    if isinstance(series, dict):
        for k, v in series.items():
            if isinstance(v, list):
                series[k] = [math.nan if x is None else x for x in v]


def load_guard_evaluation(path: str | Path) -> GuardEvaluation:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"guard evaluation not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not {"adaptive", "non_adaptive", "detectors"} & set(data):
        raise ConfigError(
            f"{path}: expected a guard evaluation (`bastion guard evaluate --out FILE`) with "
            '{"adaptive": {"detectors": {name: {"tpr": ..., "fpr": ..., "auroc": ...}}}}'
        )
    try:
        return GuardEvaluation.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(path))) from None


@dataclass
class Measurement:
    occurrence: int
    metric: str
    value: float
    detail: str


@dataclass
class UpdateResult:
    """What one update did: the changes (risk id, change) and risks left unmeasured."""

    changes: list[tuple[str, Change]] = field(default_factory=list)
    unmeasured: list[tuple[str, str]] = field(default_factory=list)


def _describe(f: Finding) -> str:
    params = ", ".join(f"{k}={v}" for k, v in f.params.items() if k not in ("n",))
    return f"{f.probe}/{f.attack}" + (f" ({params})" if params else "")


_TPR_KEYS = (
    re.compile(r"^tpr_at_fpr_(?P<x>[0-9.eE+-]+)$"),  # tpr_at_fpr_0.001 (a fraction)
    re.compile(r"^tpr_at_(?P<p>[0-9.eE+-]+)%_fpr$"),  # tpr_at_0.1%_fpr (a percentage)
)


def tpr_points(metrics: dict[str, float]) -> list[tuple[float, float, str]]:
    """(fpr, tpr, key) for every TPR-at-FPR metric, lowest FPR first. Both spellings are
    read: ``tpr_at_fpr_0.001`` and ``tpr_at_0.1%_fpr``."""
    out = {}
    for key, value in metrics.items():
        for pattern in _TPR_KEYS:
            m = pattern.match(key)
            if m is None:
                continue
            try:
                fpr = float(m["x"]) if "x" in pattern.groupindex else float(m["p"]) / 100
            except ValueError:
                continue
            if 0 < fpr < 1 and math.isfinite(value):
                out.setdefault(round(fpr, 12), (fpr, value, key))
    return sorted(out.values())


def accuracy_drop(metrics: dict[str, float]) -> float | None:
    """Clean-accuracy drop of a poisoned retrain: ``clean_accuracy_drop``, else
    ``-accuracy_change``, else ``clean_accuracy_baseline - clean_accuracy``."""
    if "clean_accuracy_drop" in metrics:
        return metrics["clean_accuracy_drop"]
    if "accuracy_change" in metrics:
        return -metrics["accuracy_change"]
    if "clean_accuracy_baseline" in metrics and "clean_accuracy" in metrics:
        return metrics["clean_accuracy_baseline"] - metrics["clean_accuracy"]
    return None


def measure(risk: Risk, report: Report) -> Measurement | str:
    """The occurrence the report supports for ``risk``; a string says why there is none."""
    spec = risk.evidence_spec
    if spec is None:
        return "no probe measures this threat"
    found = [
        f
        for f in report.findings
        if f.probe == spec.probe and (spec.attack is None or f.attack == spec.attack)
    ]
    attack = f" with attack {spec.attack}" if spec.attack else ""
    if not found:
        skip = next((s for s in report.skipped if s.probe == spec.probe), None)
        if skip is not None:  # not applicable / not measured: never evidence either way
            return f"{spec.probe} {skip.status.replace('_', ' ')}: {skip.reason}"
        return f"no {spec.probe} finding{attack} in the report"
    best: Measurement | None = None
    for f in found:
        m = _measure_one(spec.mapping, spec.metric, f, report)
        if m is not None and (
            best is None or (m.occurrence, m.value) > (best.occurrence, best.value)
        ):
            best = m
    if best is None:
        return f"{spec.probe} findings{attack} do not report {spec.metric}"
    return best


def _measure_one(mapping: str, metric: str, f: Finding, report: Report) -> Measurement | None:
    where = _describe(f)
    if mapping == "membership":
        points = tpr_points(f.metrics)
        if not points:
            return None
        # the lowest FPR at which at least one non-member can be a false positive
        negatives = f.metrics.get("nonmembers") or f.params.get("n_members")
        usable = [p for p in points if not negatives or p[0] * float(negatives) >= 1]
        fpr, tpr, key = (usable or points[-1:])[0]
        o = scoring.tpr_to_occurrence(tpr, fpr)
        return Measurement(o, f"{f.probe}.{key}", tpr, f"{where}: TPR {tpr:.4g} at FPR {fpr:g}")
    value = accuracy_drop(f.metrics) if mapping == "drop" else f.metrics.get(metric)
    if value is None or not math.isfinite(value):
        return None
    if mapping == "rate":
        rate = value
    elif mapping == "backdoor":
        # success beyond what the trigger achieves on a cleanly trained model
        base = f.metrics.get("clean_model_success_rate", 0.0)
        rate = (value - base) / (1.0 - base) if base < 1 else 0.0
    elif mapping == "drop":
        rate = min(1.0, max(0.0, value) / DROP_FULL_SCALE)
    elif mapping == "fidelity":
        k = int(report.dataset.manifest.get("num_classes") or 10)
        chance = 1.0 / max(k, 2)
        rate = (value - chance) / (1.0 - chance)
    else:  # pragma: no cover - the catalogue schema only allows the mappings above
        raise ConfigError(f"unknown evidence mapping {mapping!r}")
    o = scoring.rate_to_occurrence(rate)
    name = "clean_accuracy_drop" if mapping == "drop" else metric
    return Measurement(o, f"{f.probe}.{name}", value, f"{where}: {name} {value:.4g}")


def update_from_report(
    register: RiskRegister,
    report: Report | None,
    *,
    report_path: str | Path | None = None,
    guard: GuardEvaluation | None = None,
    guard_path: str | Path | None = None,
    by: str | None = None,
) -> UpdateResult:
    """Set occurrence from a report and detection from a guard evaluation (either may be
    None); record each change with its evidence."""
    result = UpdateResult()
    rsha = file_sha256(report_path) if report_path and Path(report_path).is_file() else None
    gsha = file_sha256(guard_path) if guard_path and Path(guard_path).is_file() else None
    for risk in register.risks:
        if report is not None:
            _update_occurrence(
                risk, report, str(report_path) if report_path else None, rsha, by, result
            )
        if guard is not None:
            rec = _update_detection(risk, guard, guard_path, gsha, by)
            if isinstance(rec, str):
                result.unmeasured.append((risk.id, rec))
            elif rec is not None:
                result.changes.append((risk.id, rec))
    sources = []
    if report_path:
        sources.append(Evidence(kind="report", source=str(report_path), sha256=rsha))
    if guard_path:
        sources.append(Evidence(kind="guard_evaluation", source=str(guard_path), sha256=gsha))
    register.updates.append(UpdateRecord(sources=sources, changes=len(result.changes)))
    return result


def _update_occurrence(
    risk: Risk,
    report: Report,
    source: str | None,
    sha: str | None,
    by: str | None,
    result: UpdateResult,
) -> None:
    m = measure(risk, report)
    if isinstance(m, str):
        result.unmeasured.append((risk.id, m))
        return
    ev = Evidence(
        kind="report", source=source, sha256=sha, metric=m.metric, value=m.value, detail=m.detail
    )
    risk.measured[m.metric] = m.value
    old = risk.occurrence
    rec = risk.change("occurrence", m.occurrence, reason=f"measured {m.detail}", evidence=ev, by=by)
    if rec is None:
        return
    result.changes.append((risk.id, rec))
    if risk.status == "mitigated" and m.occurrence > old:
        reopen = risk.change(
            "status",
            "open",
            evidence=ev,
            by=by,
            reason=f"reopened: measured occurrence rose {old} → {m.occurrence} after the risk "
            "was marked mitigated",
        )
        if reopen:
            result.changes.append((risk.id, reopen))


def _matching(risk: Risk, rates: dict[str, DetectorRates]) -> list[tuple[str, DetectorRates]]:
    return [
        (name, r)
        for name, r in rates.items()
        if any(fnmatch(name.lower(), p.lower()) for p in risk.detectors)
    ]


def _update_detection(
    risk: Risk,
    guard: GuardEvaluation,
    path: str | Path | None,
    sha: str | None,
    by: str | None,
) -> Change | str | None:
    """The detection change the adaptive figures support; a string says why none (a matching
    detector was measured, but only non-adaptively); None when no detector matches at all."""
    rates, why = guard.adaptive_rates()
    matched = _matching(risk, rates)
    if not matched:
        naive = _matching(risk, guard.non_adaptive_rates())
        if not naive:
            return None
        names = ", ".join(sorted(n for n, _ in naive))
        if not why:
            why = "the adaptive attacker did not measure these detectors"
        return f"detection not moved: {names} measured only non-adaptively; {why}"
    name, r = max(matched, key=lambda nr: (nr[1].tpr, -nr[1].fpr))
    d = scoring.detection_from_tpr(r.tpr, r.fpr)
    risk.measured[f"guard.{name}.tpr"] = r.tpr
    attack = guard.adaptive.describe() if guard.adaptive is not None else "adaptive"
    ev = Evidence(
        kind="guard_evaluation",
        source=str(path) if path else None,
        sha256=sha,
        metric=f"adaptive.{name}.tpr",
        value=r.tpr,
        detail=f"{name}: TPR {r.tpr:.3g} at FPR {r.fpr:.3g} under the adaptive attacker ({attack})",
    )
    return risk.change("detection", d, reason=f"measured detector {ev.detail}", evidence=ev, by=by)
