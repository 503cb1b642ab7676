"""The clean-accuracy drop a release gate checks: how much clean accuracy the assessed model
lost against its parent (a hardening) or a baseline.

Sources, in order:

1. ``--comparison FILE``: the ``comparison.json`` written by ``bastion harden``. Its child
   must be the assessed model (same SHA-256). The drop is the record's own
   ``clean_accuracy_drop`` (top level, or the shallowest nested one) when it has one, else
   the worst ``parent − child`` over its ``accuracy`` rows (test accuracy on the full test
   set, clean accuracy on the attacked points).
2. ``--baseline REPORT``: another assessment report (the parent's, the model in
   production): the worst ``baseline − assessed`` clean accuracy over the findings both
   reports share (same probe, attack and parameters), evasion and black-box.
3. Neither given: the comparison ``bastion harden`` wrote inside the assessed model
   directory (``MODEL/comparison/comparison.json``) when its child is the assessed model,
   else a ``clean_accuracy_drop`` number anywhere in the model's ``provenance.json``.

Nothing found is *not measured*, never a drop of zero.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from bastion.assess.schema import Report
from bastion.errors import ConfigError

DROP_KEY = "clean_accuracy_drop"
CLEAN_PROBES = ("evasion", "blackbox")
COMPARISON_IN_MODEL = Path("comparison") / "comparison.json"
NOT_GIVEN = (
    "no clean-accuracy baseline: pass --comparison comparison.json (written by `bastion "
    "harden`) or --baseline REPORT (the parent model's report)"
)


class AccuracyDrop(BaseModel):
    """A measured clean-accuracy drop (``baseline − assessed``; positive = accuracy lost)."""

    value: float
    baseline: float | None = None
    assessed: float | None = None
    source: str
    path: str | None = None
    kind: str = "comparison"  # comparison | baseline | provenance


class _Side(BaseModel):
    model_config = ConfigDict(extra="allow")

    sha256: str
    name: str = ""


class _Row(BaseModel):
    model_config = ConfigDict(extra="allow")

    group: str = ""
    metric: str = ""
    parent: float | None = None
    child: float | None = None


class ComparisonRecord(BaseModel):
    """The fields of a `bastion harden` comparison.json the gate reads."""

    model_config = ConfigDict(extra="allow")

    parent: _Side
    child: _Side
    rows: list[_Row] = []


def _read_json(path: Path, what: str) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} not found: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a valid {what} ({exc})") from None


def _shallowest_number(doc: Any, key: str, skip: tuple[str, ...] = ()) -> float | None:
    """``doc[...][key]`` at the smallest depth where it is a finite number."""
    level = [doc]
    while level:
        nxt: list[Any] = []
        for node in level:
            if isinstance(node, dict):
                v = node.get(key)
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    return float(v)
                nxt.extend(v for k, v in node.items() if k not in skip)
            elif isinstance(node, list):
                nxt.extend(node)
        level = nxt
    return None


def drop_from_comparison(path: str | Path, report: Report) -> AccuracyDrop | str:
    """The drop a comparison.json records for the assessed model; a string says why none."""
    path = Path(path)
    doc = _read_json(path, "comparison")
    try:
        rec = ComparisonRecord.model_validate(doc)
    except ValidationError:
        raise ConfigError(
            f"{path}: not a `bastion harden` comparison (needs parent.sha256, child.sha256 and "
            "rows)"
        ) from None
    if rec.child.sha256 != report.model.sha256:
        raise ConfigError(
            f"{path} compares the model {rec.child.sha256[:12]}… with its parent, but the report "
            f"is about {report.model.sha256[:12]}…: pass the comparison of the assessed model"
        )
    value = _shallowest_number(doc, DROP_KEY, skip=("rows", "backdoor"))
    if value is not None:
        return AccuracyDrop(value=value, source=f"{DROP_KEY} in {path}", path=str(path))
    acc = [
        (r.parent - r.child, r.metric, r.parent, r.child)
        for r in rec.rows
        if r.group == "accuracy"
        and r.parent is not None
        and r.child is not None
        and math.isfinite(r.parent)
        and math.isfinite(r.child)
    ]
    if not acc:
        return f"{path} has no clean-accuracy row measured on both models"
    value, metric, parent, child = max(acc)
    return AccuracyDrop(
        value=value,
        baseline=parent,
        assessed=child,
        source=f"{metric}: parent {parent:.4g} → {child:.4g} ({path})",
        path=str(path),
    )


def _clean_by_key(report: Report) -> dict[str, float]:
    return {
        f.key: f.metrics["clean_accuracy"]
        for f in report.findings
        if f.probe in CLEAN_PROBES
        and "clean_accuracy" in f.metrics
        and math.isfinite(f.metrics["clean_accuracy"])
    }


def drop_from_baseline(path: str | Path, report: Report) -> AccuracyDrop | str:
    """The worst clean-accuracy drop from a baseline report to the assessed one."""
    from bastion.risk.evidence import load_report

    path = Path(path)
    base = load_report(path)
    mine, theirs = _clean_by_key(report), _clean_by_key(base)
    shared = sorted(set(mine) & set(theirs))
    if not shared:
        return (
            f"no evasion or black-box finding of the baseline {path} matches one of the report "
            "(same probe, attack and parameters): assess both models with the same threat model"
        )
    key = max(shared, key=lambda k: theirs[k] - mine[k])
    return AccuracyDrop(
        value=theirs[key] - mine[key],
        baseline=theirs[key],
        assessed=mine[key],
        source=f"clean accuracy {theirs[key]:.4g} in the baseline → {mine[key]:.4g} "
        f"({key.split('/')[0]} {key.split('/')[1]}; worst of {len(shared)} shared findings; {path})",
        path=str(path),
        kind="baseline",
    )


def drop_from_model(report: Report) -> AccuracyDrop | str:
    """The comparison or provenance next to the assessed model directory, if any."""
    if not report.model.path or not Path(report.model.path).is_dir():
        return NOT_GIVEN
    model_dir = Path(report.model.path)
    comp = model_dir / COMPARISON_IN_MODEL
    if comp.is_file():
        try:
            found = drop_from_comparison(comp, report)
        except ConfigError:  # a stale comparison of an earlier child: not this model
            found = None
        if found is not None:
            return found
    prov = model_dir / "provenance.json"
    if prov.is_file():
        try:
            doc = json.loads(prov.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            doc = None
        value = _shallowest_number(doc, DROP_KEY)
        if value is not None:
            return AccuracyDrop(
                value=value, source=f"{DROP_KEY} in {prov}", path=str(prov), kind="provenance"
            )
    return NOT_GIVEN


def resolve_drop(
    report: Report | None, *, comparison: Path | None = None, baseline: Path | None = None
) -> AccuracyDrop | str:
    """The clean-accuracy drop from the given evidence (or the model's own); a string says
    why it is not measured."""
    if comparison is not None and baseline is not None:
        raise ConfigError("give --comparison or --baseline, not both")
    if report is None:
        return "no report given"
    if comparison is not None:
        return drop_from_comparison(comparison, report)
    if baseline is not None:
        return drop_from_baseline(baseline, report)
    return drop_from_model(report)
