"""The assessment runner: choose probes from the threat model, run them with progress,
checkpoint each finding to ``OUT/.partial.jsonl`` so a killed run resumes, and build the
:class:`Report`.

:func:`plan_assessment` prepares a run (a :class:`Plan`); an executor
(:mod:`bastion.assess.executor`: in this process, or as Ray tasks) runs the plan's probes
and hands each result back to :meth:`Plan.record`; :meth:`Plan.report` merges them in
registry order, so the report does not depend on where or in which order probes ran."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from bastion.assess.checks import check_clean_accuracy, check_compatible
from bastion.assess.executor import Executor, LocalExecutor, ProbeResult
from bastion.assess.probe import ProbeContext
from bastion.assess.registry import PROBES, make_probe
from bastion.assess.schema import (
    DatasetRef,
    Finding,
    ModelRef,
    Report,
    SanityWarning,
    Skipped,
)
from bastion.assess.scoring import overall_score
from bastion.errors import CheckpointError, ConfigError

log = logging.getLogger(__name__)
PARTIAL = ".partial.jsonl"


def run_fingerprint(ctx: ProbeContext) -> str:
    """What must match for a checkpoint to be reused: model, data, threat model, seed."""
    h = hashlib.sha256()
    for part in (
        ctx.model.sha256,
        ctx.data.test.sha256(),
        ctx.threat.model_dump_json(),
        str(ctx.seed),
    ):
        h.update(part.encode())
    return h.hexdigest()


def select_probes(ctx: ProbeContext) -> tuple[list[str], list[Skipped]]:
    """Probes to run and the ones that do not, each with its status and reason, in registry
    order: chosen from the threat model and what the model and data offer."""
    threat = ctx.threat
    unknown = [p for p in (threat.probes or []) + threat.skip if p not in PROBES]
    if unknown:
        raise ConfigError(f"unknown probe(s) {', '.join(unknown)}: choose from {', '.join(PROBES)}")
    chosen, skipped = [], []
    for name in PROBES:
        if threat.probes is not None and name not in threat.probes:
            skipped.append(
                Skipped(probe=name, reason="not listed in threat_model.probes", status="excluded")
            )
            continue
        if name in threat.skip:
            skipped.append(
                Skipped(probe=name, reason="listed in threat_model.skip", status="excluded")
            )
            continue
        verdict = make_probe(name).applicable(ctx)
        if isinstance(verdict, Skipped):
            skipped.append(verdict)
        elif verdict:
            skipped.append(Skipped(probe=name, reason=verdict))
        else:
            chosen.append(name)
    return chosen, skipped


def preflight(ctx: ProbeContext) -> float:
    """Model/data compatibility and the chance-level guard; returns the clean accuracy on
    the evaluation set."""
    check_compatible(ctx.model, ctx.data)
    x, y = ctx.eval_set()
    acc = float((ctx.model.predict(x).to(y.device) == y).float().mean())
    check_clean_accuracy(acc, y, ctx.threat.min_clean_accuracy, ctx.model.name)
    return acc


class Checkpoint:
    """What ``OUT/.partial.jsonl`` holds for this run: findings and warnings as they were
    written, and a ``probe`` record (its skipped parts, its robust masks) for each probe that
    finished, so a resumed run, local or on Ray, does not run it again."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self.warnings: list[tuple[str | None, SanityWarning]] = []
        self.finished: dict[str, ProbeResult] = {}
        self._load(fingerprint)
        if not path.exists():
            path.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")

    def _load(self, fingerprint: str) -> None:
        path = self.path
        if not path.exists():
            return
        lines = path.read_text(errors="replace").splitlines()
        try:
            head = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            head = None
        if not isinstance(head, dict):
            raise CheckpointError(
                f"{path}: the assessment checkpoint's first line is not its header: delete the "
                "file to run every probe again"
            )
        if not lines or head.get("fingerprint") != fingerprint:
            log.warning(
                "checkpoint in %s is for another model/data/threat model: starting afresh", path
            )
            path.unlink()
            return
        for line in lines[1:]:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                break  # a line cut short by a kill: everything before it is intact
            try:
                if rec.get("kind") == "finding":
                    self.findings.append(Finding.model_validate(rec["data"]))
                elif rec.get("kind") == "warning":
                    w = SanityWarning.model_validate(rec["data"])
                    self.warnings.append((rec.get("probe"), w))
                elif rec.get("kind") == "probe":
                    done = ProbeResult.from_record(rec["data"])
                    self.finished[done.probe] = done
            except (AttributeError, KeyError, TypeError, ValueError):
                raise CheckpointError(
                    f"{path}: a recorded finding is not one (edited or corrupt): delete the file "
                    "to run every probe again"
                ) from None

    def append(self, kind: str, data: dict, **extra: str) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "data": data, **extra}) + "\n")
            f.flush()


@dataclass
class Plan:
    """One assessment between choosing its probes and building its report: what the
    checkpoint already holds, which probes are left (``todo``, registry order), and
    :meth:`add_finding` / :meth:`record` to checkpoint results as they arrive, from
    whichever executor runs them, in whatever order they finish."""

    ctx: ProbeContext
    checkpoint: Checkpoint
    chosen: list[str]
    skipped: list[Skipped]
    start: float
    results: dict[str, ProbeResult] = field(default_factory=dict)
    _written: set[str] = field(default_factory=set)

    @property
    def todo(self) -> list[str]:
        return [n for n in self.chosen if n not in self.checkpoint.finished]

    @property
    def complete(self) -> bool:
        """Every chosen probe finished, in this run or an earlier one."""
        return all(self.finished(n) is not None for n in self.chosen)

    def finished(self, name: str) -> ProbeResult | None:
        """The result of a probe finished in this run or recorded in the checkpoint."""
        return self.results.get(name) or self.checkpoint.finished.get(name)

    def add_finding(self, finding: Finding) -> None:
        """Checkpoint one finding now (the local executor streams them as they come)."""
        self._written.add(finding.key)
        self.checkpoint.append("finding", finding.model_dump(mode="json"))

    def record(self, result: ProbeResult) -> None:
        """Checkpoint a finished probe: findings not yet written, files, warnings, the
        probe record."""
        root = self.ctx.out_dir.resolve()
        for rel, blob in result.files.items():
            dest = self.ctx.out_dir / rel
            if not dest.resolve().is_relative_to(root):
                raise CheckpointError(f"probe {result.probe} sent a file outside the run: {rel}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(blob)
        for f in result.findings:
            if f.key not in self._written:
                self.add_finding(f)
        for w in result.warnings:
            self.checkpoint.append("warning", w.model_dump(mode="json"), probe=result.probe)
        self.checkpoint.append("probe", result.to_record())
        self.results[result.probe] = result

    def report(self) -> Report:
        """The merged report, in registry order whatever order the probes finished in."""
        ctx, order = self.ctx, {name: i for i, name in enumerate(PROBES)}
        rank = lambda name: order.get(name, -1)  # noqa: E731
        new = [f for r in self.results.values() for f in r.findings]
        findings = sorted(self.checkpoint.findings + new, key=lambda f: rank(f.probe))
        warned = self.checkpoint.warnings + [
            (r.probe, w) for r in self.results.values() for w in r.warnings
        ]
        warnings = [w for _, w in sorted(warned, key=lambda pw: rank(pw[0] or ""))]
        skipped = list(self.skipped)
        for name in self.chosen:
            if (done := self.finished(name)) is not None:
                skipped.extend(done.skipped)
        test = ctx.data.test
        return Report(
            model=ModelRef(
                name=ctx.model.name,
                sha256=ctx.model.sha256,
                path=str(ctx.model.path.resolve()) if ctx.model.path else None,
                spec=ctx.model.spec.model_dump() if ctx.model.spec else None,
                form=ctx.model.form,
                capabilities=ctx.model.capabilities.model_dump(),
                artifacts=[a.model_dump() for a in ctx.model.artifacts],
                notes=ctx.model.notes,
            ),
            dataset=DatasetRef(
                name=test.name,
                sha256=test.sha256(),
                n=len(test),
                split=test.split,
                train_sha256=ctx.data.train.sha256(),
                manifest=test.manifest().model_dump(),
            ),
            threat_model=ctx.threat,
            findings=findings,
            skipped=skipped,
            warnings=_dedupe(warnings),
            score=overall_score(findings),
            seconds=round(time.perf_counter() - self.start, 3),
            device=str(ctx.device),
            resumed=len(self.checkpoint.findings),
        )


def plan_assessment(ctx: ProbeContext) -> Plan:
    """Preflight, read the checkpoint in ``ctx.out_dir`` and choose the probes."""
    start = time.perf_counter()
    preflight(ctx)
    if ctx.threat.eps_mode is None:  # the report says what ε meant
        ctx.threat = ctx.threat.model_copy(update={"eps_mode": ctx.space.mode})
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = Checkpoint(ctx.out_dir / PARTIAL, run_fingerprint(ctx))
    if checkpoint.findings:
        log.info("resuming: %d finding(s) already done", len(checkpoint.findings))
    ctx.done = {f.key for f in checkpoint.findings}
    ctx.warnings = []
    chosen, skipped = select_probes(ctx)
    ctx.skipped = []
    return Plan(ctx, checkpoint, chosen, skipped, start)


def run_assessment(ctx: ProbeContext, executor: Executor | None = None) -> Report:
    """Run every applicable probe (in this process unless ``executor`` says otherwise, e.g.
    :class:`bastion.assess.executor.RayExecutor`); resume from ``ctx.out_dir`` when a
    checkpoint matches."""
    plan = plan_assessment(ctx)
    (executor or LocalExecutor()).run([plan])
    return plan.report()


def _dedupe(warnings: list[SanityWarning]) -> list[SanityWarning]:
    seen, out = set(), []
    for w in warnings:
        if (w.check, w.message) not in seen:
            seen.add((w.check, w.message))
            out.append(w)
    return out


def finish(report: Report, out_dir: Path) -> Path:
    """Write report.json (and drop the checkpoint); returns its path."""
    path = out_dir / "report.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(report.model_dump_json(indent=2))
    tmp.replace(path)
    (out_dir / PARTIAL).unlink(missing_ok=True)
    return path
