"""SARIF 2.1.0 for ``bastion assess``: the findings of one assessment as one run of the
driver ``bastion-assess``, so code-scanning UIs (GitHub, GitLab, the VS Code SARIF viewer)
list them beside the model scanner's (``bastion scan --sarif``).

- one rule per ``probe/attack`` (e.g. ``evasion/pgd``), with the risk it evidences and
  ``properties.security-severity`` (GitHub's 0–10 scale, the same as Bastion's severity);
- one result per finding: ``level`` from the severity (≥ 4 error, ≥ 1.5 warning, else
  note), ``kind: pass`` with ``level: none`` when the severity is 0; the message is the
  plain-words sentence with its budget (:mod:`bastion.report.describe`); the location is
  the assessed model file (or its name as a logical location);
- one result per gradient-masking sanity warning (rule ``sanity/<check>``, warning);
- probes that did not run under ``runs[0].properties.skipped`` (never results: not
  measured is not evidence).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from bastion.assess.schema import Finding, Report, SanityWarning
from bastion.report.describe import budget, sentence
from bastion.report.risks import risk_for

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
VERSION = "2.1.0"
FILENAME = "findings.sarif"


def level(severity: float) -> str:
    """SARIF level for a Bastion severity (0–10)."""
    if severity <= 0:
        return "none"
    return "error" if severity >= 4 else "warning" if severity >= 1.5 else "note"


def rule_id(finding: Finding) -> str:
    return f"{finding.probe}/{finding.attack}"


def _uri(path: str) -> str:
    p = Path(path)
    return p.as_uri() if p.is_absolute() else p.as_posix()


def _location(report: Report) -> dict[str, Any]:
    logical = [{"fullyQualifiedName": report.model.name, "kind": "module"}]
    if report.model.path:
        return {
            "physicalLocation": {"artifactLocation": {"uri": _uri(report.model.path)}},
            "logicalLocations": logical,
        }
    return {"logicalLocations": logical}


def _fingerprint(report: Report, key: str) -> str:
    return hashlib.sha256(f"{report.model.name}\0{key}".encode()).hexdigest()[:32]


def _rule(rid: str, findings: list[Finding]) -> dict[str, Any]:
    worst = max(f.severity for f in findings)
    first = findings[0]
    risk = risk_for(first)
    text = f"Bastion {first.probe} probe, {first.attack}"
    rule: dict[str, Any] = {
        "id": rid,
        "name": rid.replace("/", "_").replace("-", "_"),
        "shortDescription": {"text": text},
        "fullDescription": {
            "text": text + (f": evidence for {risk.id} ({risk.title})" if risk else "")
        },
        "defaultConfiguration": {"level": level(worst) if worst > 0 else "note"},
        "properties": {"security-severity": f"{worst:.1f}", "tags": ["security", first.probe]},
    }
    if risk:
        rule["properties"]["risk"] = risk.id
    return rule


def _finding_result(report: Report, f: Finding, index: int) -> dict[str, Any]:
    lvl = level(f.severity)
    result: dict[str, Any] = {
        "ruleId": rule_id(f),
        "ruleIndex": index,
        "level": lvl,
        "message": {"text": f"{sentence(f)}; severity {f.severity:g}/10"},
        "locations": [_location(report)],
        "partialFingerprints": {"bastionFinding/v1": _fingerprint(report, f.key)},
        "properties": {
            "severity": f.severity,
            "budget": budget(f),
            "params": json.loads(json.dumps(f.params, default=str)),
            "metrics": {k: v for k, v in f.metrics.items() if v == v and abs(v) != float("inf")},
        },
    }
    if lvl == "none":
        result["kind"] = "pass"
    return result


def _warning_result(report: Report, w: SanityWarning, index: int) -> dict[str, Any]:
    return {
        "ruleId": f"sanity/{w.check}",
        "ruleIndex": index,
        "level": "warning",
        "message": {"text": f"{w.check} ({w.probe}): {w.message}"},
        "locations": [_location(report)],
        "partialFingerprints": {"bastionFinding/v1": _fingerprint(report, f"sanity/{w.check}")},
    }


def to_sarif(report: Report) -> dict[str, Any]:
    """The assessment as a SARIF 2.1.0 log (a JSON-ready dict)."""
    by_rule: dict[str, list[Finding]] = {}
    for f in report.findings:
        by_rule.setdefault(rule_id(f), []).append(f)
    rules = [_rule(rid, fs) for rid, fs in by_rule.items()]
    checks = list(dict.fromkeys(w.check for w in report.warnings))
    for check in checks:
        rules.append(
            {
                "id": f"sanity/{check}",
                "name": f"sanity_{check.replace('-', '_')}",
                "shortDescription": {"text": f"Gradient-masking sanity check {check} failed"},
                "defaultConfiguration": {"level": "warning"},
                "properties": {"tags": ["security", "sanity"]},
            }
        )
    index = {r["id"]: i for i, r in enumerate(rules)}
    results = [_finding_result(report, f, index[rule_id(f)]) for f in report.findings]
    results += [_warning_result(report, w, index[f"sanity/{w.check}"]) for w in report.warnings]
    run: dict[str, Any] = {
        "tool": {
            "driver": {
                "name": "bastion-assess",
                "version": report.bastion_version,
                "rules": rules,
            }
        },
        "results": results,
        "invocations": [
            {
                "executionSuccessful": True,
                "endTimeUtc": report.created.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ],
        "properties": {
            "model": {"name": report.model.name, "sha256": report.model.sha256},
            "dataset": {"name": report.dataset.name, "sha256": report.dataset.sha256},
            "score": report.score,
            "skipped": [s.model_dump() for s in report.skipped],
        },
    }
    if report.model.path:
        run["artifacts"] = [{"location": {"uri": _uri(report.model.path)}}]
    return {"$schema": SCHEMA, "version": VERSION, "runs": [run]}


def write_sarif(report: Report, out_dir: Path) -> Path:
    """Write ``findings.sarif`` beside report.json; returns its path."""
    path = Path(out_dir) / FILENAME
    path.write_text(json.dumps(to_sarif(report), indent=2) + "\n")
    return path
