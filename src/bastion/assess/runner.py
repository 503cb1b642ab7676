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
from bastion.assess.probe import ProbeContext, Shard, probe_shards
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
    """What ``OUT/.partial.jsonl`` holds for this run: findings (each with the position of
    its shard in its probe's order) and warnings as they were written, a ``shard`` record
    (its skipped parts, warnings and robust masks) for each probe shard that finished and a
    ``probe`` record for each probe that did, so a resumed run, local or on Ray, runs
    neither again."""

    def __init__(self, path: Path, fingerprint: str) -> None:
        self.path = path
        self.findings: list[Finding] = []
        self.order: dict[str, int] = {}  # finding key → its shard's position in its probe
        self.warnings: list[tuple[str | None, SanityWarning]] = []
        self.finished: dict[str, ProbeResult] = {}
        self.shards: dict[tuple[str, str], ProbeResult] = {}
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
                    finding = Finding.model_validate(rec["data"])
                    self.findings.append(finding)
                    self.order[finding.key] = int(rec.get("shard_index", 0))
                elif rec.get("kind") == "warning":
                    w = SanityWarning.model_validate(rec["data"])
                    self.warnings.append((rec.get("probe"), w))
                elif rec.get("kind") == "probe":
                    done = ProbeResult.from_record(rec["data"])
                    self.finished[done.probe] = done
                elif rec.get("kind") == "shard":
                    part = ProbeResult.from_record(rec["data"])
                    if part.shard is None:
                        raise ValueError("a shard record without its shard")
                    self.shards[(part.probe, part.shard)] = part
            except (AttributeError, KeyError, TypeError, ValueError):
                raise CheckpointError(
                    f"{path}: a recorded finding is not one (edited or corrupt): delete the file "
                    "to run every probe again"
                ) from None

    def append(self, kind: str, data: dict, **extra: str | int | None) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, "data": data, **extra}) + "\n")
            f.flush()


@dataclass
class Plan:
    """One assessment between choosing its probes and building its report: what the
    checkpoint already holds, which probes are left (``todo``, registry order) and which of
    their shards (:meth:`shards_left`), and :meth:`add_finding` / :meth:`record_shard` to
    checkpoint results as they arrive, from whichever executor runs them, in whatever order
    they finish; a probe is recorded (:meth:`record`) when its last shard is in."""

    ctx: ProbeContext
    checkpoint: Checkpoint
    chosen: list[str]
    skipped: list[Skipped]
    start: float
    results: dict[str, ProbeResult] = field(default_factory=dict)
    parts: dict[tuple[str, str], ProbeResult] = field(default_factory=dict)
    _written: set[str] = field(default_factory=set)
    _shards: dict[str, list[Shard]] = field(default_factory=dict)

    @property
    def todo(self) -> list[str]:
        """Chosen probes not finished yet, in this run or an earlier one."""
        return [n for n in self.chosen if self.finished(n) is None]

    @property
    def complete(self) -> bool:
        """Every chosen probe finished, in this run or an earlier one."""
        return all(self.finished(n) is not None for n in self.chosen)

    def finished(self, name: str) -> ProbeResult | None:
        """The result of a probe finished in this run or recorded in the checkpoint."""
        return self.results.get(name) or self.checkpoint.finished.get(name)

    def shards(self, name: str) -> list[Shard]:
        """Probe ``name``'s shards, in its order."""
        if name not in self._shards:
            self._shards[name] = probe_shards(make_probe(name), self.ctx)
        return self._shards[name]

    def shard_index(self, name: str, shard: str) -> int:
        return next(i for i, s in enumerate(self.shards(name)) if s.id == shard)

    def shard_done(self, name: str, shard: str) -> ProbeResult | None:
        """A shard's result, from this run or the checkpoint."""
        return self.parts.get((name, shard)) or self.checkpoint.shards.get((name, shard))

    def shards_left(self, name: str) -> list[Shard]:
        """Probe ``name``'s shards with no result yet, in its order."""
        return [s for s in self.shards(name) if self.shard_done(name, s.id) is None]

    def add_finding(self, finding: Finding, shard_index: int = 0) -> None:
        """Checkpoint one finding now (the local executor streams them as they come), with
        its shard's position, so the report orders findings as a sequential run does."""
        self._written.add(finding.key)
        self.checkpoint.order[finding.key] = shard_index
        self.checkpoint.append("finding", finding.model_dump(mode="json"), shard_index=shard_index)

    def record_shard(self, part: ProbeResult) -> ProbeResult | None:
        """Checkpoint a finished shard (its files, findings not yet written, its record);
        returns its probe's result, recorded, when that was the probe's last shard."""
        if part.shard is None:
            raise CheckpointError(f"probe {part.probe} sent a result without its shard")
        self._write_files(part)
        index = self.shard_index(part.probe, part.shard)
        for f in part.findings:
            if f.key not in self._written:
                self.add_finding(f, index)
        self.checkpoint.append("shard", part.to_record())
        self.parts[(part.probe, part.shard)] = part
        return None if self.shards_left(part.probe) else self.close(part.probe)

    def close(self, name: str) -> ProbeResult:
        """Merge probe ``name``'s shards (all finished) into its result and record it."""
        parts = [self.shard_done(name, s.id) for s in self.shards(name)]
        if any(p is None for p in parts):
            raise CheckpointError(f"probe {name} closed before all its shards finished")
        new = {s for n, s in self.parts if n == name}
        result = ProbeResult.merge(name, [p for p in parts if p is not None], new=new)
        self.record(result)
        return result

    def _write_files(self, result: ProbeResult) -> None:
        root = self.ctx.out_dir.resolve()
        for rel, blob in result.files.items():
            dest = self.ctx.out_dir / rel
            if not dest.resolve().is_relative_to(root):
                raise CheckpointError(f"probe {result.probe} sent a file outside the run: {rel}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(blob)

    def record(self, result: ProbeResult) -> None:
        """Checkpoint a finished probe: files, findings not yet written, warnings, the
        probe record."""
        self._write_files(result)
        for f in result.findings:
            if f.key not in self._written:
                self.add_finding(f)
        for w in result.warnings:
            self.checkpoint.append("warning", w.model_dump(mode="json"), probe=result.probe)
        self.checkpoint.append("probe", result.to_record())
        self.results[result.probe] = result

    def report(self) -> Report:
        """The merged report, in registry order (within a probe, its shards' order) whatever
        order the probes and shards finished in."""
        ctx, order = self.ctx, {name: i for i, name in enumerate(PROBES)}
        rank = lambda name: order.get(name, -1)  # noqa: E731
        shard = self.checkpoint.order
        new = [f for r in self.results.values() for f in r.findings]
        findings = sorted(
            self.checkpoint.findings + new, key=lambda f: (rank(f.probe), shard.get(f.key, 0))
        )
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
