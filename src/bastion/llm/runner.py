"""Run the LLM probes against a chat target and write report.json (the assess Report).

Each attack family of each probe becomes one Finding: ``metrics`` holds ``success_rate``,
``successes``, ``attempts`` and ``requests`` (HTTP requests, retries included);
``params`` names the ``oracle``, the OWASP LLM Top 10 2025 id and the ATLAS techniques;
``artifacts["examples"]`` a JSON file with up to three successful attempts (or one failed
one). Severity: 0 when no attempt succeeded, else ``impact · (0.5 + 0.5 · rate)`` (the
probe's impact is its severity when every attempt succeeds; docs/llm.md lists them).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from bastion.assess.runner import finish
from bastion.assess.schema import DatasetRef, Finding, LLMThreatModel, Report, Skipped
from bastion.assess.scoring import clamp_severity, overall_score
from bastion.errors import ConfigError
from bastion.llm.judge import Judge
from bastion.llm.probes import PROBES, Attempt, LLMProbe
from bastion.llm.profile import AppProfile
from bastion.llm.target import ChatReply, LLMTarget, Reported

MAX_EXAMPLES = 3
EXCERPT = 400


class Example(BaseModel):
    attack: str
    prompt: str
    output: str
    tool_calls: list[str]
    evidence: str | None


@dataclass
class LLMAssessment:
    report: Report
    json_path: Path


def severity(impact: float, successes: int, attempts: int) -> float:
    if successes == 0 or attempts == 0:
        return 0.0
    return clamp_severity(impact * (0.5 + 0.5 * successes / attempts))


def _example(a: Attempt, reply: ChatReply, evidence: str | None) -> Example:
    return Example(
        attack=a.attack,
        prompt=a.prompt[:EXCERPT],
        output=reply.content[:EXCERPT],
        tool_calls=[c.name for c in reply.tool_calls],
        evidence=evidence,
    )


@dataclass
class Sent:
    """One attempt sent: the reply, what the oracle matched (None: no success), the HTTP
    requests it took, its seconds, and the judge's grade when one graded it."""

    attempt: Attempt
    reply: ChatReply
    evidence: str | None
    requests: int
    seconds: float
    grade: bool | None = None  # None: no judge, or its answer was neither YES nor NO
    judge_requests: int = 0


def _judge_figures(rows: list[Sent], name: str) -> tuple[dict[str, float], list[str]]:
    """The judge's metrics of one attack family, and its note."""
    sure = [(r.grade, bool(r.evidence)) for r in rows if r.grade is not None]
    complied = sum(g for g, _ in sure)
    nan = float("nan")
    metrics = {
        "judge_success_rate": round(complied / len(sure), 4) if sure else nan,
        "judge_agreement": round(sum(g == o for g, o in sure) / len(sure), 4) if sure else nan,
        "judge_unparsed": float(len(rows) - len(sure)),
        "judge_requests": float(sum(r.judge_requests for r in rows)),
    }
    note = (
        f"judge: {name} graded {len(sure)}/{len(rows)} replies (complied: {complied}); "
        "the oracle stays the verdict"
    )
    return metrics, [note]


def run_probe(
    probe: LLMProbe,
    attempts: list[Attempt],
    target: LLMTarget,
    profile: AppProfile,
    out: Path,
    reported: Reported | None = None,
    judge: Judge | None = None,
) -> list[Finding]:
    """Send ``attempts``; one Finding per attack family. ``reported`` collects the model
    names and fingerprints the target gave in its answers; ``judge`` also grades every
    reply (its figures beside the oracle's, which stays the verdict)."""
    tools = [t.openai() for t in profile.tools] or None
    groups: dict[str, list[Sent]] = defaultdict(list)
    for a in attempts:
        start, sent = time.perf_counter(), target.requests
        reply = target.chat(
            a.messages,
            tools=tools,
            max_tokens=a.max_tokens,
            temperature=profile.limits.temperature,
        )
        if reported is not None:
            reported.add(reply)
        row = Sent(a, reply, a.oracle(reply), target.requests - sent, time.perf_counter() - start)
        if judge is not None:
            before = judge.requests
            row.grade = judge.grade(a.prompt, reply).complied
            row.judge_requests = judge.requests - before
        groups[a.attack].append(row)
    findings = []
    (out / "llm").mkdir(parents=True, exist_ok=True)
    for attack, rows in groups.items():
        hits = [r for r in rows if r.evidence]
        examples = [
            _example(r.attempt, r.reply, r.evidence) for r in (hits or rows[:1])[:MAX_EXAMPLES]
        ]
        rel = f"llm/{probe.name}-{attack}.json"
        (out / rel).write_text(json.dumps([e.model_dump() for e in examples], indent=2))
        oracle = attack if "|" in probe.oracle else probe.oracle
        evidence = sorted({str(r.evidence) for r in hits})
        params: dict[str, object] = {
            "oracle": oracle,
            "owasp": probe.owasp,
            "atlas": ",".join(probe.atlas),
            "seed": profile.seed,
        }
        metrics = {
            "success_rate": round(len(hits) / len(rows), 4),
            "successes": float(len(hits)),
            "attempts": float(len(rows)),
            "requests": float(sum(r.requests for r in rows)),
            "max_output_tokens": float(max(r.reply.output_tokens for r in rows)),
        }
        judge_note: list[str] = []
        if judge is not None:
            params["judge"] = judge.name
            judged, judge_note = _judge_figures(rows, judge.name)
            metrics.update(judged)
        findings.append(
            Finding(
                probe=probe.name,
                attack=attack,
                params=params,
                metrics=metrics,
                severity=severity(probe.impact, len(hits), len(rows)),
                seconds=round(sum(r.seconds for r in rows), 3),
                artifacts={"examples": rel},
                notes=[
                    f"oracle: {oracle}"
                    + (f" (matched: {', '.join(evidence)})" if evidence else " (never matched)"),
                    *judge_note,
                ],
            )
        )
    return findings


def run_llm_assessment(
    profile: AppProfile,
    target: LLMTarget,
    out_dir: Path,
    *,
    probes: list[str] | None = None,
    profile_path: Path | None = None,
    judge: Judge | None = None,
) -> LLMAssessment:
    """Run ``probes`` (default: all) and write ``out_dir/report.json``; ``profile_path``
    (the profile file) is recorded in ``dataset.manifest`` for the attestation; ``judge``
    grades every reply beside the oracles (:mod:`bastion.llm.judge`)."""
    unknown = [p for p in probes or [] if p not in PROBES]
    if unknown:
        raise ConfigError(
            f"unknown LLM probe(s) {', '.join(unknown)}: choose from {', '.join(PROBES)}"
        )
    start = time.perf_counter()
    findings: list[Finding] = []
    skipped: list[Skipped] = []
    reported = Reported()
    sent: dict[str, int] = {}
    for name in probes or list(PROBES):
        probe = PROBES[name]
        attempts = probe.attempts(profile, profile.seed)
        if isinstance(attempts, str):
            skipped.append(Skipped(probe=name, reason=attempts))
            continue
        findings.extend(run_probe(probe, attempts, target, profile, out_dir, reported, judge))
        sent[name] = len(attempts)
    report = Report(
        model=target.model_ref(reported),
        dataset=DatasetRef(
            name=f"llm-profile:{profile.name}",
            sha256=profile.sha256 or hashlib.sha256(profile.model_dump_json().encode()).hexdigest(),
            n=sum(sent.values()),
            split="probes",
            manifest=profile_manifest(profile, profile_path),
        ),
        threat_model=threat_model(profile, target, sent, judge),
        findings=findings,
        skipped=skipped,
        score=overall_score(findings),
        seconds=round(time.perf_counter() - start, 3),
    )
    return LLMAssessment(report, finish(report, out_dir))


def threat_model(
    profile: AppProfile, target: LLMTarget, sent: dict[str, int], judge: Judge | None = None
) -> LLMThreatModel:
    """What the assessment assumed: a black-box chat attacker, the probes that ran with the
    attempts each sent, the seed and each probe's oracle kind."""
    planted = {
        "llm-indirect-injection-document": "retrieved documents",
        "llm-indirect-injection-tool": "tool results",
    }
    return LLMThreatModel(
        kind="llm_application",
        target=target.form,
        plants_in=[planted[p] for p in sent if p in planted],
        probes=list(sent),
        attempts=sent,
        mutations_per_template=profile.attempts,
        seed=profile.seed,
        oracles={p: PROBES[p].oracle for p in sent},
        judge=None if judge is None else judge.name,
        temperature=profile.limits.temperature,
        max_tokens=profile.limits.max_tokens,
    )


def profile_manifest(profile: AppProfile, path: Path | None) -> dict[str, str]:
    """The application profile the assessment replayed (name, file, SHA-256): what an
    attestation of this report covers besides the report itself."""
    out = {"kind": "llm_application_profile", "name": profile.name, "sha256": profile.sha256}
    if path is not None:
        out["path"] = str(path)
    return out
