"""Bastion's own reliability and security suite, run thoroughly (``make reliability``; issue 14).

Each check is one pytest subprocess writing a JUnit XML report into a temporary folder; the
slow tests are included and the fuzzers run with thorough settings
(``BASTION_FUZZ_EXAMPLES``, ``BASTION_API_FUZZ_EXAMPLES``). The script then prints one table
-- check / tried / clean / failed / skipped / seconds, counted from the JUnit test cases --
and the four headline counts of the issue, derived from the failed test cases (their
failure message and text, as pytest wrote them):

- **server errors**: failures whose text carries schemathesis' ``Server error`` (the
  ``not_a_server_error`` check) or the gateway's 500 body ``internal server error``;
- **tracebacks**: failures whose text carries ``Traceback (most recent call last)`` (the CLI
  tests assert none reaches the terminal and quote stderr when one does), or the API fuzz
  server's ``logged a traceback``, plus every failure of the parser-fuzzing checks (an
  exception other than ``BastionError`` escaped a parser of user input) except hypothesis'
  ``DeadlineExceeded`` (one example ran over its time limit: a slow parse or a loaded
  machine, failed in the table but no traceback);
- **exit 0 on bad input**: failures of the CLI bad-input check whose message reads
  ``exit 0`` (the table-driven test reports ``exit {code}, stderr ...``);
- **executed payloads**: failures whose text names the ``EXECUTED`` marker, or says a
  payload ``executed`` (the malicious-model tests touch a marker in a temporary folder).

It exits 1 when any test failed or errored (or a pytest run could not start), else 0.
Checks whose test file is absent (the malicious-model corpus, while not yet written) are
listed as ``absent`` and do not count.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Check:
    name: str
    paths: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Failure:
    check: str
    test: str
    text: str


@dataclass
class Result:
    check: Check
    present: bool
    tried: int = 0
    clean: int = 0
    failed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    rc: int = 0
    failures: list[Failure] = field(default_factory=list)


def checks(examples: int, api_examples: int) -> list[Check]:
    fuzz = {"BASTION_FUZZ_EXAMPLES": str(examples)}
    return [
        Check(
            "api fuzz (schemathesis)",
            ("tests/reliability/test_api_fuzz.py",),
            {"BASTION_API_FUZZ_EXAMPLES": str(api_examples)},
        ),
        Check("parser fuzzing", ("tests/reliability/test_fuzz_parsers.py",), fuzz),
        Check(
            "model/audit/http fuzzing", ("tests/reliability/test_fuzz_models_audit_http.py",), fuzz
        ),
        Check("cli bad input", ("tests/reliability/test_cli_bad_input.py",)),
        Check("crash (kill -9)", ("tests/reliability/test_crash.py",)),
        Check("audit durability", ("tests/audit/test_durability.py",)),
        Check("malicious models", ("tests/reliability/test_malicious_models.py",)),
    ]


FUZZ_CHECKS = {"parser fuzzing", "model/audit/http fuzzing"}


def run_check(check: Check, out: Path, timeout: int) -> Result:
    present = [p for p in check.paths if (ROOT / p).exists()]
    result = Result(check, present=bool(present))
    if not present:
        return result
    xml = out / (re.sub(r"\W+", "_", check.name).strip("_") + ".xml")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--timeout={timeout}"]
    cmd += [f"--junitxml={xml}", *present]
    env = {**os.environ, **check.env}
    print(f"== {check.name}: {' '.join(present)} {check.env or ''}", flush=True)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    result.seconds = time.monotonic() - t0
    result.rc = proc.returncode
    tail = proc.stdout.decode(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
    print(f"   {tail[0]}  [{result.seconds:.0f} s]", flush=True)
    if xml.exists():
        read_junit(xml, result)
    if result.rc not in (0, 1, 5) or (result.rc == 1 and not result.failed):
        # pytest itself failed (usage, collection, internal error): count the run as failed
        text = proc.stdout.decode(errors="replace")[-4000:]
        result.failures.append(Failure(check.name, f"pytest exit {result.rc}", text))
        result.failed = max(result.failed, 1)
    return result


def read_junit(xml: Path, result: Result) -> None:
    for case in ET.parse(xml).getroot().iter("testcase"):
        result.tried += 1
        bad = case.findall("failure") + case.findall("error")
        if bad:
            result.failed += 1
            text = "\n".join((b.get("message") or "") + "\n" + (b.text or "") for b in bad)
            test = f"{case.get('classname')}::{case.get('name')}"
            result.failures.append(Failure(result.check.name, test, text))
        elif case.find("skipped") is not None:
            result.skipped += 1
        else:
            result.clean += 1


def headline(results: list[Result]) -> dict[str, int]:
    """The issue's four counts, from the failed test cases (rules in the module docstring)."""
    counts = {"server errors": 0, "tracebacks": 0, "exit 0 on bad input": 0, "executed payloads": 0}
    for r in results:
        for f in r.failures:
            text = f.text
            if "Server error" in text or "internal server error" in text:
                counts["server errors"] += 1
            if (
                "Traceback (most recent call last)" in text
                or "logged a traceback" in text
                or (f.check in FUZZ_CHECKS and "DeadlineExceeded" not in text)
            ):
                counts["tracebacks"] += 1
            if f.check == "cli bad input" and re.search(r"\bexit 0\b", text):
                counts["exit 0 on bad input"] += 1
            if "EXECUTED" in text or re.search(r"\bpayload\b.*\bexecuted\b", text, re.I):
                counts["executed payloads"] += 1
    return counts


def settings_of(check: Check) -> str:
    """The examples a check ran with, e.g. ``1000 examples/property``."""
    if "BASTION_FUZZ_EXAMPLES" in check.env:
        return f"{check.env['BASTION_FUZZ_EXAMPLES']} examples/property"
    if "BASTION_API_FUZZ_EXAMPLES" in check.env:
        return f"{check.env['BASTION_API_FUZZ_EXAMPLES']} examples/operation/mode"
    return ""


def table(results: list[Result]) -> str:
    head = f"{'check':<28} {'tried':>6} {'clean':>6} {'failed':>6} {'skipped':>7} {'seconds':>8}"
    head += "  settings"
    rows = [head, "-" * len(head)]
    for r in results:
        if not r.present:
            rows.append(f"{r.check.name:<28} {'absent':>6}")
            continue
        rows.append(
            f"{r.check.name:<28} {r.tried:>6} {r.clean:>6} {r.failed:>6} {r.skipped:>7} "
            f"{r.seconds:>8.0f}  {settings_of(r.check)}"
        )
    done = [r for r in results if r.present]
    rows.append("-" * len(head))
    rows.append(
        f"{'total':<28} {sum(r.tried for r in done):>6} {sum(r.clean for r in done):>6} "
        f"{sum(r.failed for r in done):>6} {sum(r.skipped for r in done):>7} "
        f"{sum(r.seconds for r in done):>8.0f}"
    )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--examples", type=int, default=1000, help="hypothesis examples per property"
    )
    parser.add_argument(
        "--api-examples", type=int, default=100, help="schemathesis examples per operation and mode"
    )
    parser.add_argument("--timeout", type=int, default=3600, help="pytest-timeout per test (s)")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        help="run only checks whose name contains this (repeat)",
    )
    args = parser.parse_args(argv)
    if args.examples < 1 or args.api_examples < 1 or args.timeout < 1:
        parser.error("--examples, --api-examples and --timeout must be at least 1")
    selected = [
        c
        for c in checks(args.examples, args.api_examples)
        if not args.only or any(o in c.name for o in args.only)
    ]
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bastion-reliability-") as tmp:
        results = [run_check(c, Path(tmp), args.timeout) for c in selected]
    wall = time.monotonic() - t0
    print()
    print(table(results))
    print()
    for name, n in headline(results).items():
        print(f"{name + ':':<22} {n}")
    print(f"{'wall time:':<22} {wall:.0f} s")
    failures = [f for r in results for f in r.failures]
    if failures:
        print("\nfailed:")
        for f in failures:
            first = next((ln for ln in f.text.splitlines() if ln.strip()), "")
            print(f"  [{f.check}] {f.test}: {first[:200]}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
