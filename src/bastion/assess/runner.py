"""The assessment runner: choose probes from the threat model, run them with progress,
checkpoint each finding to ``OUT/.partial.jsonl`` so a killed run resumes, and build the
:class:`Report`."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

from bastion.assess.checks import check_clean_accuracy, check_compatible
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


def _load_partial(path: Path, fingerprint: str) -> tuple[list[Finding], list[SanityWarning]]:
    if not path.exists():
        return [], []
    findings, warnings = [], []
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
        return [], []
    for line in lines[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break  # a line cut short by a kill: everything before it is intact
        try:
            if rec.get("kind") == "finding":
                findings.append(Finding.model_validate(rec["data"]))
            elif rec.get("kind") == "warning":
                warnings.append(SanityWarning.model_validate(rec["data"]))
        except (AttributeError, KeyError, TypeError, ValueError):
            raise CheckpointError(
                f"{path}: a recorded finding is not one (edited or corrupt): delete the file "
                "to run every probe again"
            ) from None
    return findings, warnings


def _append(path: Path, kind: str, data: dict) -> None:
    with path.open("a") as f:
        f.write(json.dumps({"kind": kind, "data": data}) + "\n")
        f.flush()


def run_assessment(ctx: ProbeContext) -> Report:
    """Run every applicable probe; resume from ``ctx.out_dir`` when a checkpoint matches."""
    start = time.perf_counter()
    preflight(ctx)
    if ctx.threat.eps_mode is None:  # the report says what ε meant
        ctx.threat = ctx.threat.model_copy(update={"eps_mode": ctx.space.mode})
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    partial = ctx.out_dir / PARTIAL
    fingerprint = run_fingerprint(ctx)
    findings, warnings = _load_partial(partial, fingerprint)
    if not partial.exists():
        partial.write_text(json.dumps({"fingerprint": fingerprint}) + "\n")
    if findings:
        log.info("resuming: %d finding(s) already done", len(findings))
    resumed = len(findings)
    ctx.done = {f.key for f in findings}
    ctx.warnings = []
    chosen, skipped = select_probes(ctx)
    ctx.skipped = []
    for name in chosen:
        probe = make_probe(name)
        for finding in probe.run(ctx):
            findings.append(finding)
            ctx.done.add(finding.key)
            _append(partial, "finding", finding.model_dump(mode="json"))
        for w in ctx.warnings:
            _append(partial, "warning", w.model_dump(mode="json"))
        warnings.extend(ctx.warnings)
        ctx.warnings = []
    skipped.extend(ctx.skipped)
    test = ctx.data.test
    report = Report(
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
        seconds=round(time.perf_counter() - start, 3),
        device=str(ctx.device),
        resumed=resumed,
    )
    return report


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
