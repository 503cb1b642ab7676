"""`bastion scan` against ModelScan, picklescan, fickling and ModelAudit on one corpus.

The corpus (tests/scan/corpus.py) is built in a temporary folder and every malicious file is
first proven to fire under its naive loader in a subprocess. Then each tool scans every file
through its own Python API. A file counts as flagged when the tool would fail it:

- Bastion: a finding of severity high or critical (what every loading path refuses);
- picklescan: ``infected_files > 0`` (its CLI's exit 1);
- ModelScan: any issue (its CLI's exit 1);
- fickling: ``scan_file`` severity other than ``LIKELY_SAFE`` (``scan_zip_archive`` for zips);
- ModelAudit: an issue of severity ``critical`` or ``warning`` (its CLI's failing severities).

A tool error or timeout on a file is not a detection. Per tool: detection rate on malicious
files, false-positive rate on benign files (plain tensors / state dicts / safetensors /
numeric numpy; scikit-learn; full nn.Module pickles; other formats), files/s and MB/s over the
whole corpus (after one untimed warm-up pass, the median of ``--runs`` rounds with the tools
interleaved; ModelAudit, far slower, runs once). Peers are
benchmark-only: ``pip install modelscan picklescan fickling modelaudit`` (see the report).

Run: ``.venv/bin/python benchmarks/bench_scan.py [--runs 3] [--skip modelaudit]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.scan.corpus import CorpusItem, build_corpus  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scan.json"
BENIGN_GROUPS = ("tensors", "sklearn", "full-module", "other")
SKLEARN_PROFILES = ("sklearn", "joblib")


@dataclass
class Verdict:
    flagged: bool
    error: str = ""


@dataclass
class ToolResult:
    tool: str
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    seconds: list[float] = field(default_factory=list)


def bastion_tool() -> Callable[[Path], Verdict]:
    from bastion.scan.engine import scan_file

    def scan(path: Path) -> Verdict:
        r = scan_file(path, profiles=SKLEARN_PROFILES)
        worst = r.worst
        return Verdict(worst is not None and worst.rank >= 2, r.error or "")

    return scan


def picklescan_tool() -> Callable[[Path], Verdict]:
    from picklescan.scanner import scan_file_path

    def scan(path: Path) -> Verdict:
        r = scan_file_path(str(path))
        return Verdict(r.infected_files > 0, "scan error" if r.scan_err else "")

    return scan


def modelscan_tool() -> Callable[[Path], Verdict]:
    from modelscan.modelscan import ModelScan

    def scan(path: Path) -> Verdict:
        r = ModelScan().scan(str(path))
        errors = "; ".join(str(e.get("description", e))[:80] for e in r.get("errors", []))
        return Verdict(bool(r.get("issues")), errors)

    return scan


def fickling_tool() -> Callable[[Path], Verdict]:
    import fickling
    from fickling.analysis import Severity

    def scan(path: Path) -> Verdict:
        try:
            if zipfile.is_zipfile(path):
                results = fickling.scan_zip_archive(str(path))
                values = results.values() if isinstance(results, dict) else results
                sev = [getattr(v, "severity", Severity.LIKELY_SAFE) for v in values]
                return Verdict(any(s != Severity.LIKELY_SAFE for s in sev))
            r = fickling.scan_file(str(path), graceful=True)
            return Verdict(r.severity != Severity.LIKELY_SAFE)
        except Exception as exc:
            return Verdict(False, f"{type(exc).__name__}: {str(exc)[:80]}")

    return scan


def modelaudit_tool() -> Callable[[Path], Verdict]:
    os.environ.setdefault("PROMPTFOO_DISABLE_TELEMETRY", "1")
    from modelaudit.core import scan_model_directory_or_file

    def scan(path: Path) -> Verdict:
        try:
            r = scan_model_directory_or_file(str(path), timeout=30)
        except Exception as exc:
            return Verdict(False, f"{type(exc).__name__}: {str(exc)[:80]}")
        sev = {str(getattr(i.severity, "value", i.severity)).lower() for i in r.issues}
        return Verdict(bool(sev & {"critical", "warning"}))

    return scan


TOOLS: dict[str, Callable[[], Callable[[Path], Verdict]]] = {
    "bastion": bastion_tool,
    "modelscan": modelscan_tool,
    "picklescan": picklescan_tool,
    "fickling": fickling_tool,
    "modelaudit": modelaudit_tool,
}


def _scan_all(scan: Callable[[Path], Verdict], items: list[CorpusItem]) -> dict[str, Verdict]:
    verdicts = {}
    for item in items:
        try:
            verdicts[str(item.path)] = scan(item.path)
        except Exception as exc:  # a peer crashing on a file is its result
            verdicts[str(item.path)] = Verdict(False, f"crash {type(exc).__name__}")
    return verdicts


def run_tools(names: list[str], items: list[CorpusItem], runs: int) -> dict[str, ToolResult]:
    """One untimed warm-up pass per tool (its verdicts: imports and caches settle), then
    ``runs`` timed rounds over the corpus with the tools interleaved, the order rotated each
    round, so that a noisy machine slows every tool alike (ModelAudit, far slower: its
    warm-up pass is its one timed run)."""
    scans, results = {}, {}
    for name in names:
        try:
            scans[name] = TOOLS[name]()
        except ImportError as exc:
            print(f"{name}: not installed ({exc})", file=sys.stderr)
            continue
        start = time.perf_counter()
        results[name] = ToolResult(name, _scan_all(scans[name], items))
        if name == "modelaudit":
            results[name].seconds.append(time.perf_counter() - start)
    timed = [n for n in scans if n != "modelaudit"]
    for r in range(runs):
        for name in timed[r % len(timed) :] + timed[: r % len(timed)]:
            start = time.perf_counter()
            _scan_all(scans[name], items)
            results[name].seconds.append(time.perf_counter() - start)
    return results


def bastion_cli_seconds(folder: Path) -> float:
    """Wall time of ``bastion scan FOLDER --format json`` (a process: imports included)."""
    exe = Path(sys.executable).with_name("bastion")
    start = time.perf_counter()
    subprocess.run(
        [
            str(exe),
            "scan",
            str(folder),
            "--format",
            "json",
            "--profile",
            "sklearn",
            "--profile",
            "joblib",
        ],
        capture_output=True,
        check=False,
        timeout=600,
    )
    return time.perf_counter() - start


def summarise(res: ToolResult, items: list[CorpusItem], total_bytes: int) -> dict:
    mal = [i for i in items if i.malicious]
    row: dict = {"tool": res.tool}
    row["detected"] = sum(res.verdicts[str(i.path)].flagged for i in mal)
    row["malicious"] = len(mal)
    row["detection_rate"] = row["detected"] / len(mal)
    for group in BENIGN_GROUPS:
        ben = [i for i in items if i.kind == group]
        fp = sum(res.verdicts[str(i.path)].flagged for i in ben)
        row[f"fp_{group}"] = fp
        row[f"n_{group}"] = len(ben)
    ben_all = [i for i in items if not i.malicious and i.kind != "suspicious"]
    row["fp_rate"] = sum(res.verdicts[str(i.path)].flagged for i in ben_all) / len(ben_all)
    sec = statistics.median(res.seconds)
    row["seconds"] = round(sec, 3)
    row["runs"] = len(res.seconds)
    row["files_per_s"] = round(len(items) / sec, 1)
    row["mb_per_s"] = round(total_bytes / sec / 1e6, 2)
    row["missed"] = [i.technique for i in mal if not res.verdicts[str(i.path)].flagged]
    row["false_positives"] = [i.technique for i in ben_all if res.verdicts[str(i.path)].flagged]
    row["errors"] = sum(bool(v.error) for v in res.verdicts.values())
    return row


def table(rows: list[dict]) -> str:
    head = (
        "| tool | detection | FP tensors/state dicts/safetensors | FP sklearn/joblib | "
        "FP full modules | FP other | FP rate (all benign) | files/s | × Bastion's | MB/s | "
        "errors |"
    )
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(
            f"| {r['tool']} | {r['detected']}/{r['malicious']} ({r['detection_rate']:.0%}) | "
            f"{r['fp_tensors']}/{r['n_tensors']} | {r['fp_sklearn']}/{r['n_sklearn']} | "
            f"{r['fp_full-module']}/{r['n_full-module']} | {r['fp_other']}/{r['n_other']} | "
            f"{r['fp_rate']:.0%} | {r['files_per_s']} | {r['files_per_s_vs_bastion']} | "
            f"{r['mb_per_s']} | {r['errors']} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--skip", action="append", default=[], choices=sorted(TOOLS))
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        items = build_corpus(Path(tmp) / "corpus", Path(tmp) / "MARKER", verify=True)
        build_s = time.perf_counter() - start
        total_bytes = sum(i.path.stat().st_size for i in items)
        names = [n for n in TOOLS if n not in args.skip]
        by_tool = run_tools(names, items, args.runs)
        rows = [summarise(res, items, total_bytes) for res in by_tool.values()]
        base = next((r["files_per_s"] for r in rows if r["tool"] == "bastion"), None)
        for r in rows:
            r["files_per_s_vs_bastion"] = round(r["files_per_s"] / base, 2) if base else None
        cli_s = bastion_cli_seconds(Path(tmp) / "corpus")
    techniques = sorted({i.technique for i in items if i.malicious})
    doc = {
        "corpus": {
            "files": len(items),
            "bytes": total_bytes,
            "malicious": len(techniques),
            "benign": {g: sum(i.kind == g for i in items) for g in BENIGN_GROUPS},
            "suspicious": [i.technique for i in items if i.kind == "suspicious"],
            "build_and_verify_s": round(build_s, 1),
            "verified_by_construction": [
                i.technique for i in items if i.verified == "by-construction"
            ],
            "techniques": techniques,
        },
        "tools": rows,
        "suspicious_flagged": {
            name: [
                i.technique
                for i in items
                if i.kind == "suspicious" and r.verdicts[str(i.path)].flagged
            ]
            for name, r in by_tool.items()
        },
        "bastion_cli_seconds": round(cli_s, 2),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2))
    print(table(rows))
    print(f"\nbastion scan CLI over the corpus folder: {cli_s:.2f} s (process start included)")
    for r in rows:
        if r["missed"]:
            print(f"{r['tool']} missed: {', '.join(r['missed'])}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
