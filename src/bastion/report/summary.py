"""The plain-words summary that opens the assessment report.

Built only from the report's data (and a gate decision when a policy is given):

- the verdict against the policy, with the rules that failed;
- the three most serious findings: the worst finding of each probe first (so three
  evasion attacks at one ε do not hide a membership leak), then the next worst, each with
  the budget it was measured at and what it means for this model's exposure;
- the recommended controls: the catalogue controls of the risks those findings evidence,
  each linked to the risk id and to the ``bastion harden`` recipe or gateway setting that
  implements it (:mod:`bastion.report.controls`);
- what was not measured (skipped probes), since a quiet report is not a safe model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bastion.assess.schema import Finding, Report
from bastion.gate.evaluate import GateDecision
from bastion.report.controls import Implementation, implementations
from bastion.report.describe import attacker, budget, measured, pct
from bastion.report.risks import risk_for

TOP = 3
LOW = 1.5  # below this severity an attack gained little at its budget
MODERATE = 4.0  # from here a finding is serious (the report's "high" band)
NOT_FINDINGS = {"sanity-checks"}  # bookkeeping findings, never "serious"


@dataclass(frozen=True)
class Verdict:
    policy: str
    passed: bool
    text: str
    failed: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyFinding:
    probe: str
    attack: str
    severity: float
    what: str  # what was measured
    budget: str  # at which budget
    exposure: str  # what it means for this model
    risk_id: str | None = None
    risk_title: str | None = None


@dataclass(frozen=True)
class ControlLink:
    control_id: str
    name: str
    risk_ids: tuple[str, ...]
    ways: tuple[Implementation, ...] = ()


@dataclass(frozen=True)
class RiskNote:
    id: str
    title: str
    description: str
    atlas: tuple[str, ...] = ()


@dataclass(frozen=True)
class Summary:
    headline: str
    attacker: str
    verdict: Verdict | None = None
    top: list[KeyFinding] = field(default_factory=list)
    controls: list[ControlLink] = field(default_factory=list)
    not_measured: list[str] = field(default_factory=list)
    risks: list[RiskNote] = field(default_factory=list)


def verdict_of(decision: GateDecision) -> Verdict:
    failed = tuple(f"{r.name}: {r.reason}" for r in decision.failures)
    return Verdict(decision.policy, decision.passed, decision.summary(), failed)


def most_serious(findings: list[Finding], k: int = TOP) -> list[Finding]:
    """Up to ``k`` findings, worst first: the worst of each probe, then the next worst."""
    ranked = sorted(
        (f for f in findings if f.attack not in NOT_FINDINGS and f.severity > 0),
        key=lambda f: -f.severity,
    )
    firsts, rest, seen = [], [], set()
    for f in ranked:
        (rest if f.probe in seen else firsts).append(f)
        seen.add(f.probe)
    return sorted((firsts + rest)[:k], key=lambda f: -f.severity)


def exposure(finding: Finding, report: Report) -> str:
    """What a finding means for this model, in the terms it was measured in."""
    who = attacker(report)
    m, p = finding.metrics, finding.params
    weak = finding.severity < LOW
    if finding.probe in {"evasion", "blackbox"}:
        asr = m.get("attack_success_rate")
        if finding.attack.endswith("-curve") or asr is None:
            return (
                f"Robustness falls as the allowed change grows; the curve shows how much change "
                f"{who} needs. Budgets beyond the measured ε grid were not tried."
            )
        eps = f"ε={p.get('eps')}" if "eps" in p else "the measured budget"
        if weak:
            return (
                f"At {eps} {finding.attack} changed few correct answers ({pct(asr)}); "
                "a stronger attack or a larger ε was not measured here and may do more."
            )
        where = "through the API alone" if finding.probe == "blackbox" else f"as {who}"
        return (
            f"Acting {where}, changes no larger than {eps} turn {pct(asr)} of this model's "
            "correct answers into wrong ones: its decisions on such inputs cannot be trusted "
            "where an adversary can touch the input."
        )
    if finding.probe == "membership":
        tpr = m.get("tpr_at_fpr")
        what = (
            f"confidently identifies {pct(tpr)} of training records"
            if tpr is not None and tpr == tpr
            else "separates training records from others"
        )
        if weak:
            return (
                f"The {finding.attack} attack barely beats chance at this budget: "
                "little measured leakage."
            )
        if finding.severity < MODERATE:
            return (
                f"Anyone with the model's outputs {what} with the {finding.attack} attack "
                "somewhat better than chance: the measured leakage is small but present."
            )
        return (
            f"Anyone with the model's outputs {what} with the {finding.attack} attack: "
            "whether a person's record was in the training data is exposed."
        )
    if finding.probe == "extraction":
        fid = m.get("fidelity")
        q = m.get("queries")
        spent = f"{int(q)} queries" if q is not None else "the measured query budget"
        if fid is None:
            return "Extraction was attempted; no fidelity was recorded."
        return (
            f"With {spent} an attacker obtains a copy that agrees with this model on "
            f"{pct(fid)} of inputs: the model's function (and a surrogate for transfer "
            "attacks) can be stolen at that query volume."
        )
    if finding.probe == "poisoning":
        rate = p.get("rate")
        share = pct(float(rate)) if rate is not None else "a share"
        if finding.attack == "badnets":
            return (
                f"Whoever can contribute {share} of the training data can plant a hidden "
                "trigger that decides the model's answer."
            )
        return f"Flipping the labels of {share} of the training data degrades the retrained model."
    return "See the finding's metrics; this probe has no plain-words reading yet."


def _key(f: Finding, report: Report) -> KeyFinding:
    risk = risk_for(f)
    return KeyFinding(
        probe=f.probe,
        attack=f.attack,
        severity=f.severity,
        what=measured(f),
        budget=budget(f),
        exposure=exposure(f, report),
        risk_id=risk.id if risk else None,
        risk_title=risk.title if risk else None,
    )


def recommended(top: list[Finding]) -> list[ControlLink]:
    """The controls of the risks ``top`` evidences, each once with every risk it treats:
    those Bastion implements first, then in the order of the findings and the catalogue."""
    names: dict[str, str] = {}
    risks: dict[str, list[str]] = {}
    for f in top:
        risk = risk_for(f)
        if risk is None:
            continue
        for c in risk.controls:
            names.setdefault(c.id, c.name)
            if risk.id not in risks.setdefault(c.id, []):
                risks[c.id].append(risk.id)
    links = [ControlLink(cid, names[cid], tuple(risks[cid]), implementations(cid)) for cid in names]
    return sorted(links, key=lambda c: not c.ways)


def _headline(report: Report, top: list[Finding], verdict: Verdict | None) -> str:
    parts = []
    if verdict is not None:
        word = "passes" if verdict.passed else "fails"
        parts.append(f"The model {word} the policy {verdict.policy} ({verdict.text}).")
    if top:
        worst = top[0]
        parts.append(
            f"Vulnerability score {report.score:g}/100; the most serious finding is "
            f"{worst.probe} · {worst.attack} at severity {worst.severity:g}/10."
        )
    elif report.findings:
        parts.append(
            f"Vulnerability score {report.score:g}/100: no probe found a weakness at the "
            "budgets measured."
        )
    else:
        parts.append("No probe produced a finding: nothing was measured.")
    return " ".join(parts)


def risk_notes(top: list[Finding]) -> list[RiskNote]:
    """The catalogue entries of the risks ``top`` evidences, once each."""
    notes: dict[str, RiskNote] = {}
    for f in top:
        risk = risk_for(f)
        if risk is not None and risk.id not in notes:
            notes[risk.id] = RiskNote(risk.id, risk.title, risk.description, tuple(risk.atlas))
    return list(notes.values())


def build_summary(report: Report, decision: GateDecision | None = None) -> Summary:
    """The summary of ``report`` (with the gate ``decision`` when a policy was given)."""
    verdict = verdict_of(decision) if decision is not None else None
    top = most_serious(report.findings)
    return Summary(
        headline=_headline(report, top, verdict),
        attacker=attacker(report),
        verdict=verdict,
        top=[_key(f, report) for f in top],
        controls=recommended(top),
        not_measured=[
            f"{s.probe} ({s.status.replace('_', ' ')}): {s.reason}" for s in report.skipped
        ],
        risks=risk_notes(top),
    )
