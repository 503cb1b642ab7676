"""SARIF 2.1.0 (OASIS Static Analysis Results Interchange Format, 2020) for ``bastion scan``:
one run of the driver ``bastion-scan``, one rule per finding rule id, one result per finding
with the file as its physical location, the archive member as a logical location and the
byte offset as the region's ``byteOffset`` when known. Code-scanning UIs (GitHub, GitLab,
VS Code SARIF viewer) read this form.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bastion.scan.findings import ScanFinding, ScanReport, Severity

SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
VERSION = "2.1.0"
LEVEL = {
    Severity.critical: "error",
    Severity.high: "error",
    Severity.medium: "warning",
    Severity.low: "note",
}


def _uri(path: str) -> str:
    p = Path(path)
    return p.as_posix() if not p.is_absolute() else p.as_uri()


def _result(finding: ScanFinding, file: str, rule_index: int) -> dict[str, Any]:
    physical: dict[str, Any] = {"artifactLocation": {"uri": _uri(file)}}
    if finding.offset is not None:
        physical["region"] = {"byteOffset": finding.offset}
    location: dict[str, Any] = {"physicalLocation": physical}
    if finding.location != file:
        member = finding.location[len(file) + 1 :] if finding.location.startswith(file) else ""
        location["logicalLocations"] = [
            {"fullyQualifiedName": finding.location, "name": member or finding.location}
        ]
    text = finding.message + (f" ({finding.why})" if finding.why else "")
    result: dict[str, Any] = {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": LEVEL[finding.severity],
        "message": {"text": text},
        "locations": [location],
        "properties": {"severity": finding.severity.value, "format": finding.format},
    }
    if finding.symbol:
        result["properties"]["symbol"] = finding.symbol
    return result


def to_sarif(report: ScanReport) -> dict[str, Any]:
    """The report as a SARIF 2.1.0 log (a JSON-ready dict)."""
    rules: dict[str, dict[str, Any]] = {}
    worst: dict[str, Severity] = {}
    for f in report.findings:
        if f.rule not in worst or f.severity.rank > worst[f.rule].rank:
            worst[f.rule] = f.severity
    for rule_id in sorted(worst):
        rules[rule_id] = {
            "id": rule_id,
            "shortDescription": {"text": f"bastion scan rule {rule_id}"},
            "defaultConfiguration": {"level": LEVEL[worst[rule_id]]},
        }
    index = {rule_id: i for i, rule_id in enumerate(rules)}
    results = [_result(f, r.path, index[f.rule]) for r in report.files for f in r.findings]
    artifacts = [{"location": {"uri": _uri(r.path)}, "length": r.bytes} for r in report.files]
    return {
        "$schema": SCHEMA,
        "version": VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "bastion-scan",
                        "rules": list(rules.values()),
                    }
                },
                "artifacts": artifacts,
                "results": results,
            }
        ],
    }
