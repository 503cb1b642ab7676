"""Assessment sweeps: many models × threat models (× data sets), each pair one assessment
written to ``OUT/<model>__<threat>/`` (``OUT/<model>__<threat>__<data>/`` with a data list)
with the usual report files, and one summary (``OUT/summary.json``, ``OUT/summary.md``).

Every pair's probes go to one executor at once (:mod:`bastion.assess.executor`): locally
they run one after another, on Ray all at the same time. A pair whose ``report.json`` is
already there is not run again (its row is read back from it); a pair killed half-way
resumes from its own checkpoint. The summary gives each pair's score and the gate's
worst-case metrics (:data:`bastion.gate.metrics.FINDING_METRICS`: the minimum of
accuracies, the maximum of attack success, AUC, fidelity).

Example ``sweep.yaml`` (relative paths resolve against the file's folder)::

    seed: 0
    models:
      - {name: cnn, path: models/cnn}
      - {name: bc, path: bc.onnx, data: bc.csv, data_options: {label_column: label}}
    threat_models:
      - {path: threats/weak.yaml}
      - name: strong
        threat: {eps: [0.1], attacks: [pgd], budgets: {n_eval: 200}}
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bastion.assess.api import assessment_context, write_outputs
from bastion.assess.executor import Executor, LocalExecutor
from bastion.assess.profile import RecipeConfig, Seed
from bastion.assess.runner import Plan, plan_assessment
from bastion.assess.schema import Report, ThreatModel
from bastion.config import load_yaml_model, read_yaml, validate
from bastion.data.dataset import DataBundle
from bastion.data.loaders import DataOptions
from bastion.errors import BastionError, CheckpointError, ConfigError
from bastion.models.loaded import LoadedModel

NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
NameField = Field(None, pattern=NAME, description="folder-safe label (default: the file's stem)")


class SweepModel(BaseModel):
    """One model, with what ``bastion assess`` would take for it."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = NameField
    path: str | None = Field(None, description="a model of any form --model reads")
    entry_point: str | None = Field(None, description="module:function returning an nn.Module")
    weights: str | None = None
    onnx_mode: Literal["auto", "torch", "runtime"] = "auto"
    trust: list[str] = Field(default_factory=list, description="skops types to trust")
    data: str | None = Field(None, description="default: the model's provenance, else digits")
    data_root: str | None = None
    data_options: DataOptions = Field(default_factory=DataOptions)
    members: str | None = Field(None, description="the model's training rows: FILE or train-split")
    training: RecipeConfig | None = None

    @model_validator(mode="after")
    def _needs_model(self) -> SweepModel:
        if not self.path and not self.entry_point:
            raise ValueError("each model needs `path` (or `entry_point`)")
        if self.path and self.path.startswith(("http://", "https://")):
            raise ValueError("a sweep assesses model files: an http(s) endpoint is not one")
        return self

    @property
    def label(self) -> str:
        if self.name:
            return self.name
        if self.path:
            return Path(self.path.rstrip("/")).stem
        return str(self.entry_point).rsplit(":", 1)[-1]


class SweepThreat(BaseModel):
    """A threat model: a YAML file (``path``) or inline (``threat``, with a ``name``)."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = NameField
    path: str | None = None
    threat: ThreatModel | None = None

    @model_validator(mode="after")
    def _one_source(self) -> SweepThreat:
        if (self.path is None) == (self.threat is None):
            raise ValueError("give each threat model a `path` or an inline `threat`, not both")
        if self.threat is not None and not self.name:
            raise ValueError("an inline `threat` needs a `name`")
        return self

    @property
    def label(self) -> str:
        return self.name or Path(str(self.path)).stem


class SweepData(BaseModel):
    """A data set every model is assessed on (instead of each model's own)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str | None = NameField
    data: str = Field(min_length=1)
    data_root: str | None = None
    data_options: DataOptions = Field(default_factory=DataOptions)

    @property
    def label(self) -> str:
        return self.name or Path(self.data).stem


class SweepConfig(BaseModel):
    """``bastion sweep SWEEP.yaml``: models × threat models (× data)."""

    model_config = ConfigDict(extra="forbid")

    models: list[SweepModel] = Field(min_length=1)
    threat_models: list[SweepThreat] = Field(min_length=1)
    data: list[SweepData] | None = Field(None, min_length=1)
    seed: Seed = 0
    device: str = Field("cpu", min_length=1)
    out: str | None = Field(None, description="output folder (--out overrides it)")

    @model_validator(mode="after")
    def _unique(self) -> SweepConfig:
        for what, items in (
            ("model", self.models),
            ("threat model", self.threat_models),
            ("data set", self.data or []),
        ):
            labels = [i.label for i in items]
            twice = sorted({x for x in labels if labels.count(x) > 1})
            if twice:
                raise ValueError(f"two {what}s are named {', '.join(twice)}: give each a `name`")
        return self


def _rel(base: Path, p: str | None) -> str | None:
    """``p`` against the sweep file's folder when it names something there."""
    if p is None or Path(p).is_absolute():
        return p
    try:
        return str(base / p) if (base / p).exists() else p
    except (OSError, ValueError):
        return p


def load_sweep(path: str | Path) -> SweepConfig:
    """Read and validate a sweep file; threat model files are read (and checked) now."""
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping with `models:` and `threat_models:`")
    cfg = validate(SweepConfig, raw, str(path))
    base = path.parent
    models = [
        m.model_copy(
            update={
                k: _rel(base, getattr(m, k))
                for k in ("path", "weights", "data", "data_root", "members")
            }
        )
        for m in cfg.models
    ]
    threats = []
    for i, t in enumerate(cfg.threat_models):
        if t.path is not None:
            try:
                threat = load_yaml_model(ThreatModel, _rel(base, t.path) or t.path)
            except ConfigError as exc:
                raise ConfigError(f"{path}: threat_models.{i}: {exc}") from None
            t = SweepThreat(name=t.label, threat=threat)
        threats.append(t)
    data = [
        d.model_copy(update={"data": _rel(base, d.data), "data_root": _rel(base, d.data_root)})
        for d in cfg.data or []
    ]
    out = str(base / cfg.out) if cfg.out and not Path(cfg.out).is_absolute() else cfg.out
    return cfg.model_copy(
        update={"models": models, "threat_models": threats, "data": data or None, "out": out}
    )


@dataclass(frozen=True)
class Pair:
    """One assessment of a sweep."""

    model: SweepModel
    threat_name: str
    threat: ThreatModel
    data: SweepData | None = None

    @property
    def name(self) -> str:
        parts = [self.model.label, self.threat_name]
        return "__".join(parts + ([self.data.label] if self.data else []))


def pairs(cfg: SweepConfig) -> Iterator[Pair]:
    """Models × data × threat models, in file order."""
    for m in cfg.models:
        for d in cfg.data or [None]:
            for t in cfg.threat_models:
                yield Pair(m, t.label, t.threat or ThreatModel(), d)


class SweepRow(BaseModel):
    """One pair's line in the summary. ``status``: ``assessed`` (ran now), ``resumed`` (ran
    now, part of it from a checkpoint) or ``existing`` (its report.json was already there).
    ``metrics``: the gate's worst case per ``probe.metric`` over the pair's findings."""

    pair: str
    model: str
    threat: str
    data: str | None = None
    status: Literal["assessed", "resumed", "existing"]
    score: float
    findings: int
    warnings: int
    skipped: int
    metrics: dict[str, float] = Field(default_factory=dict)
    report: str
    seconds: float = 0.0


class SweepSummary(BaseModel):
    rows: list[SweepRow]
    seconds: float = 0.0


def gate_metrics(report: Report) -> dict[str, float]:
    """``probe.metric`` → the worst case over the report's findings, as the gate reads it."""
    from bastion.gate.metrics import FINDING_METRICS, metric_value

    out: dict[str, float] = {}
    for probe in ("evasion", "blackbox", "extraction", "poisoning", "membership"):
        for metric, agg in FINDING_METRICS[probe].items():
            values = [
                v
                for f in report.findings
                if f.probe == probe
                and (v := metric_value(f, metric)) is not None
                and math.isfinite(v)
            ]
            if values:
                out[f"{probe}.{metric}"] = min(values) if agg == "min" else max(values)
    return out


def row(pair: Pair, report: Report, status: str) -> SweepRow:
    return SweepRow(
        pair=pair.name,
        model=pair.model.label,
        threat=pair.threat_name,
        data=pair.data.label if pair.data else None,
        status=status,
        score=report.score,
        findings=len(report.findings),
        warnings=len(report.warnings),
        skipped=len(report.skipped),
        metrics=gate_metrics(report),
        report=str(Path(pair.name) / "report.json"),
        seconds=report.seconds,
    )


def _existing(path: Path) -> Report:
    try:
        return Report.model_validate_json(path.read_text())
    except (ValidationError, ValueError, UnicodeDecodeError):
        raise CheckpointError(
            f"{path}: not a report (edited or cut short): delete it to assess that pair again"
        ) from None


class _Loader:
    """Each model and data set loaded once, however many pairs share it."""

    def __init__(self, cfg: SweepConfig) -> None:
        self.cfg = cfg
        self.models: dict[str, LoadedModel] = {}
        self.data: dict[tuple[str, str], DataBundle] = {}

    def model(self, m: SweepModel) -> LoadedModel:
        from bastion.models.io import load_model

        if m.label not in self.models:
            self.models[m.label] = load_model(
                m.path,
                entry_point=m.entry_point,
                weights=m.weights,
                onnx_mode=m.onnx_mode,
                trusted=m.trust or None,
            )
        return self.models[m.label]

    def bundle(self, pair: Pair) -> DataBundle:
        from bastion.data import load_dataset

        m, d = pair.model, pair.data
        key = (m.label, d.label if d else "")
        if key not in self.data:
            if d is not None:
                name, root, opts = d.data, d.data_root, d.data_options
            else:
                model = self.model(m)
                name = m.data or model.provenance.get("data") or "digits"
                root, opts = m.data_root or model.provenance.get("data_root"), m.data_options
            self.data[key] = load_dataset(name, root=root, seed=self.cfg.seed, options=opts)
        return self.data[key]


def run_sweep(
    cfg: SweepConfig, out: Path, executor: Executor | None = None, *, record: bool = True
) -> SweepSummary:
    """Assess every pair not already reported under ``out``; write each pair's reports as
    soon as the executor has finished (or failed) and then the summary."""
    start = time.perf_counter()
    loader = _Loader(cfg)
    rows: dict[str, SweepRow] = {}
    plans: dict[str, tuple[Pair, Plan]] = {}
    todo = list(pairs(cfg))
    for pair in todo:
        where = out / pair.name
        if (where / "report.json").exists():
            rows[pair.name] = row(pair, _existing(where / "report.json"), "existing")
            continue
        try:
            ctx = assessment_context(
                loader.model(pair.model),
                loader.bundle(pair),
                pair.threat,
                where,
                device=cfg.device,
                seed=cfg.seed,
                recipe=pair.model.training.recipe() if pair.model.training else None,
                members=pair.model.members,
            )
            plans[pair.name] = (pair, plan_assessment(ctx))
        except BastionError as exc:
            raise _naming(exc, pair) from None
    try:
        (executor or LocalExecutor()).run([p for _, p in plans.values()])
    finally:
        for name, (pair, plan) in plans.items():
            if plan.complete:
                report = plan.report()
                write_outputs(report, plan.ctx.out_dir, record=record)
                rows[name] = row(pair, report, "resumed" if report.resumed else "assessed")
    summary = SweepSummary(
        rows=[rows[p.name] for p in todo], seconds=round(time.perf_counter() - start, 3)
    )
    write_summary(summary, out)
    return summary


def _naming(exc: BastionError, pair: Pair) -> BastionError:
    """The same error, its message starting with the pair it is about."""
    try:
        return type(exc)(f"sweep pair {pair.name}: {exc}")
    except TypeError:  # an error type whose constructor takes something else
        return ConfigError(f"sweep pair {pair.name}: {exc}")


# the summary table's columns (summary.json keeps every metric of :func:`gate_metrics`)
KEY_METRICS = (
    "evasion.robust_accuracy",
    "blackbox.robust_accuracy",
    "extraction.fidelity",
    "poisoning.attack_success_rate",
    "membership.auc",
)


def metric_columns(summary: SweepSummary) -> list[str]:
    """The key metrics any row has."""
    return [m for m in KEY_METRICS if any(m in r.metrics for r in summary.rows)]


def write_summary(summary: SweepSummary, out: Path) -> tuple[Path, Path]:
    """``summary.json`` and ``summary.md`` under ``out``."""
    js = out / "summary.json"
    js.write_text(json.dumps(summary.model_dump(mode="json"), indent=2) + "\n")
    cols = metric_columns(summary)
    head = ["pair", "status", "score", "findings", "warnings", *cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in summary.rows:
        cells = [r.pair, r.status, f"{r.score:.1f}", str(r.findings), str(r.warnings)]
        cells += [f"{r.metrics[c]:.3f}" if c in r.metrics else "–" for c in cols]
        lines.append("| " + " | ".join(cells) + " |")
    md = out / "summary.md"
    md.write_text("# Sweep summary\n\n" + "\n".join(lines) + "\n")
    return js, md
