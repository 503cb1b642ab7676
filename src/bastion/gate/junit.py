"""JUnit XML for CI systems: one test case per rule; failing rules are failures, rules
skipped for a missing metric (``if_missing: skip``) are skipped."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from bastion.gate.evaluate import GateDecision


def to_junit(decision: GateDecision, *, suite: str = "bastion gate") -> str:
    results = decision.results
    root = ET.Element(
        "testsuites",
        name=suite,
        tests=str(len(results)),
        failures=str(sum(r.verdict == "fail" for r in results)),
    )
    ts = ET.SubElement(
        root,
        "testsuite",
        name=f"{suite}: {decision.policy}",
        tests=str(len(results)),
        failures=str(sum(r.verdict == "fail" for r in results)),
        errors="0",
        skipped=str(sum(r.verdict == "skip" for r in results)),
        timestamp=decision.created.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    for r in results:
        case = ET.SubElement(
            ts, "testcase", classname=f"bastion.gate.{decision.policy}", name=r.name
        )
        measured = "not measured" if r.measured is None else f"{r.measured:.6g}"
        if r.verdict == "fail":
            fail = ET.SubElement(case, "failure", message=r.reason, type="GateRuleFailed")
            fail.text = f"{r.rule}\nmeasured: {measured}\n{r.reason}"
        elif r.verdict == "skip":
            ET.SubElement(case, "skipped", message=r.reason)
        out = ET.SubElement(case, "system-out")
        out.text = f"{r.rule}: measured {measured}"
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def write_junit(decision: GateDecision, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(to_junit(decision))
    return path
