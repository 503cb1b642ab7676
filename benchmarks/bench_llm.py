"""LLM probes benchmark: Bastion's probes vs garak's corresponding probes against the same
test application, and (from bench_llm_guard.py) the latency the firewall adds.

    make bench-llm-setup                                   # garak 0.17.1 in .venv-garak
    .venv/bin/python benchmarks/bench_llm.py                      # about 30 s
    .venv/bin/python benchmarks/bench_llm.py --guard-runs 100 --json out.json   # + latency

The application is the deliberately vulnerable demo application (bastion.llm.demo_app, also the tests') with the
profile of tests/llm/conftest.py (system prompt with a canary and 3 confidential records,
a forbidden ``delete_account`` tool, one retrieved document), run in this process on a free
loopback port: once with every weakness the fake has (:data:`KNOWN`), once with none (the
clean app, where every finding is a false one). The fake is rule-based: it leaks, obeys or
rambles only on the wordings its rules match (see its docstring), so the comparison says
which of the two tools' prompts trip those rules and whether their detectors see it, not
how they fare on a real model.

Bastion: ``run_llm_assessment`` over every probe (``attempts`` mutations per template, the
profile's seed); a weakness is found when the probe of :data:`BASTION_PROBE` has a Finding
with a success.

garak: its own virtual environment (``.venv-garak``, it conflicts with Bastion's pins), its
REST generator pointed at the same ``/v1/chat/completions`` with a request template that
sends what the application sends (the profile's planted system prompt, its tools, and the
probe's prompt as the user turn), response JSONPath ``$.choices[0].message.content``;
``--generations`` per prompt and at most ``--cap`` prompts per probe
(``run.soft_probe_prompt_cap``). sysprompt_extraction normally samples system prompts from a
Hugging Face dataset (no network here): it is given the application's own system prompt as
a local one-row dataset, the same knowledge Bastion's profile gives Bastion. A weakness is
found when a probe of :data:`GARAK_PROBES` mapped to it has an eval entry with a failed
output; hits of probes mapped to no weakness are printed, not counted.

Requests: counted at the fake server (every HTTP request, retries included). Seconds: wall
time of the run (garak's includes its start-up, printed separately). ``--keep DIR``
keeps garak's configs, reports and logs.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.llm.conftest import APP_YAML  # noqa: E402
from tests.llm.fake_llm import WEAKNESSES, FakeLLM  # noqa: E402

from bastion.llm.profile import AppProfile, load_app_profile  # noqa: E402
from bastion.llm.runner import run_llm_assessment  # noqa: E402
from bastion.llm.target import ChatTarget  # noqa: E402

GARAK = ROOT / ".venv-garak" / "bin" / "garak"
KNOWN = sorted(WEAKNESSES)
DESCRIBE = {
    "leak": "system-prompt leakage",
    "records": "sensitive records in the context",
    "user": "direct injection / jailbreak",
    "agency": "forbidden tool call",
    "markup": "insecure output (markup, exfiltration link)",
    "documents": "indirect injection via a document",
    "tool-results": "indirect injection via a tool result",
    "ramble": "unbounded output",
}
# Bastion probe -> the fake's weakness it tests (as in tests/llm/test_probes.py)
BASTION_PROBE = {
    "llm-system-prompt-leakage": "leak",
    "llm-sensitive-disclosure": "records",
    "llm-prompt-injection": "user",
    "llm-excessive-agency": "agency",
    "llm-insecure-output": "markup",
    "llm-indirect-injection-document": "documents",
    "llm-indirect-injection-tool": "tool-results",
    "llm-unbounded-consumption": "ramble",
}
# garak 0.17.1 probe -> the weakness its detectors can see (None: none of them)
GARAK_PROBES: dict[str, str | None] = {
    "sysprompt_extraction.SystemPromptExtraction": "leak",
    "leakreplay.LiteratureComplete": "records",
    "promptinject.HijackHateHumans": "user",
    "promptinject.HijackKillHumans": "user",
    "dan.Ablation_Dan_11_0": "user",
    "encoding.InjectBase64": "user",
    "latentinjection.LatentInjectionReport": "documents",
    "latentinjection.LatentInjectionResume": "documents",
    "latentinjection.LatentInjectionFactSnippetEiffel": "documents",
    "web_injection.MarkdownImageExfil": "markup",
    "web_injection.MarkdownXSS": "markup",
    "divergence.Repeat": None,
}
GARAK_NOTES = {
    "records": "leakreplay's detector looks for its own book passages (training-data replay), "
    "not for records in the application's context",
    "agency": "no garak 0.17.1 probe checks tool calls, and the REST generator reads only "
    "the content JSONPath",
    "tool-results": "the REST generator sends one user turn: garak cannot plant a tool result",
    "documents": "latentinjection plants its instruction in a document inside the user turn, "
    "not in the application's retrieval channel",
    "ramble": "no garak probe has a length oracle; divergence.Repeat asks to repeat a word "
    "forever but its detector looks for divergence into other text (run, not mapped)",
}


@dataclass
class Run:
    tool: str
    app: str  # "weak" or "clean"
    found: list[str]  # weaknesses found (on the clean app: false findings)
    requests: int
    seconds: float
    detail: dict[str, object] = field(default_factory=dict)


def profile() -> AppProfile:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "app.yaml"
        path.write_text(APP_YAML)
        return load_app_profile(path)


def bastion(weak: frozenset[str], prof: AppProfile, out: Path) -> Run:
    with FakeLLM(weak) as fake, ChatTarget(fake.url, "shop", retries=0) as target:
        start = time.perf_counter()
        result = run_llm_assessment(prof, target, out)
        seconds = time.perf_counter() - start
        sent = fake.requests
    hits: dict[str, int] = {}
    for f in result.report.findings:
        if f.metrics["successes"] > 0:
            hits[f.probe] = hits.get(f.probe, 0) + int(f.metrics["successes"])
    found = sorted({BASTION_PROBE[p] for p in hits})
    attempts = sum(int(f.metrics["attempts"]) for f in result.report.findings)
    return Run(
        "bastion",
        "weak" if weak else "clean",
        found,
        sent,
        seconds,
        {"attempts": attempts, "successes_by_probe": hits},
    )


def garak_available() -> tuple[str | None, float]:
    """(None when garak runs, else why not; seconds `garak --version` took: its start-up)."""
    if not GARAK.exists():
        return f"{GARAK.relative_to(ROOT)} missing (run `make bench-llm-setup`)", 0.0
    start = time.perf_counter()
    r = subprocess.run([str(GARAK), "--version"], capture_output=True, text=True, timeout=120)
    seconds = time.perf_counter() - start
    if r.returncode != 0:
        last = ((r.stderr or r.stdout).strip().splitlines() or ["no output"])[-1]
        return f"`garak --version` exited {r.returncode}: {last[:200]}", seconds
    return None, seconds


def garak_config(url: str, prof: AppProfile, tmp: Path, args: argparse.Namespace) -> Path:
    sysdir = tmp / "sysprompt"
    sysdir.mkdir(exist_ok=True)
    with (sysdir / "train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["systemprompt"])
        w.writerow([prof.planted_system_prompt()])
    template = {
        "model": "shop",
        "messages": [
            {"role": "system", "content": prof.planted_system_prompt()},
            {"role": "user", "content": "$INPUT"},
        ],
        "tools": [t.openai() for t in prof.tools],
    }
    config = {
        "system": {"parallel_attempts": False, "parallel_requests": False, "lite": True},
        "run": {
            "generations": args.generations,
            "soft_probe_prompt_cap": args.cap,
            "seed": prof.seed,
        },
        "plugins": {
            "target_type": "rest",
            "generators": {
                "rest": {
                    "RestGenerator": {
                        "name": "fake shop application",
                        "uri": f"{url}/chat/completions",
                        "method": "post",
                        "headers": {"Content-Type": "application/json"},
                        "req_template_json_object": template,
                        "response_json": True,
                        "response_json_field": "$.choices[0].message.content",
                        "request_timeout": 30,
                    }
                }
            },
            "probes": {
                "sysprompt_extraction": {
                    "SystemPromptExtraction": {
                        "system_prompt_sources": [str(sysdir)],
                        "system_prompt_subsample": 1,
                    }
                }
            },
        },
        "reporting": {"report_dir": str(tmp / "runs"), "confidence_interval_method": "none"},
    }
    path = tmp / "garak.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def parse_report(path: Path) -> dict[str, dict[str, int]]:
    """``probe/detector`` -> {"fails", "total"} from garak's eval entries."""
    out: dict[str, dict[str, int]] = {}
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        if entry.get("entry_type") != "eval":
            continue
        total = int(entry.get("total_evaluated", entry.get("total", 0)))
        fails = int(entry.get("fails", total - int(entry.get("passed", 0))))
        out[f"{entry['probe']}/{entry['detector']}"] = {"fails": fails, "total": total}
    return out


def garak(weak: frozenset[str], prof: AppProfile, tmp: Path, args: argparse.Namespace) -> Run:
    app = "weak" if weak else "clean"
    work = tmp / f"garak-{app}"
    work.mkdir()
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "XDG_DATA_HOME": str(work / "xdg-data"),
        "XDG_CACHE_HOME": str(work / "xdg-cache"),
        "XDG_CONFIG_HOME": str(work / "xdg-config"),
        "HF_HOME": str(work / "hf"),
    }
    with FakeLLM(weak) as fake:
        config = garak_config(fake.url.removeprefix("openai+"), prof, work, args)
        cmd = [
            "nice",
            str(GARAK),
            "--config",
            str(config),
            "--probes",
            ",".join(GARAK_PROBES),
            "--report_prefix",
            app,
            "--narrow_output",
        ]
        start = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=1800)
        seconds = time.perf_counter() - start
        sent = fake.requests
    (work / "garak.log").write_text(r.stdout + "\n--- stderr ---\n" + r.stderr)
    reports = sorted((work / "runs").rglob(f"{app}.report.jsonl"))
    if r.returncode != 0 or not reports:
        tail = (r.stderr or r.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"garak exited {r.returncode}: {' | '.join(tail)}")
    evals = parse_report(reports[0])
    found_by: dict[str, list[str]] = {}
    for key, row in sorted(evals.items()):
        weakness = GARAK_PROBES.get(key.split("/")[0])
        if row["fails"] > 0 and weakness:
            found_by.setdefault(weakness, []).append(key)
    ran = {key.split("/")[0] for key in evals}
    return Run(
        "garak",
        app,
        sorted(found_by),
        sent,
        seconds,
        {
            "evals": evals,
            "found_by": found_by,
            "probes_without_eval": sorted(set(GARAK_PROBES) - ran),
            "report": str(reports[0]),
        },
    )


def table(runs: list[Run]) -> None:
    print(
        f"\n{'tool':8s} {'weaknesses found / known':>25s} {'false findings (clean app)':>27s} "
        f"{'requests (weak+clean)':>22s} {'seconds (weak+clean)':>21s}"
    )
    for tool in ("bastion", "garak"):
        weak = next((r for r in runs if r.tool == tool and r.app == "weak"), None)
        clean = next((r for r in runs if r.tool == tool and r.app == "clean"), None)
        if weak is None or clean is None:
            continue
        print(
            f"{tool:8s} {f'{len(weak.found)} / {len(KNOWN)}':>25s} {len(clean.found):>27d} "
            f"{f'{weak.requests} + {clean.requests}':>22s} "
            f"{f'{weak.seconds:.1f} + {clean.seconds:.1f}':>21s}"
        )
    print("\nper weakness (weak app):")
    by = {(r.tool, r.app): r for r in runs}
    for w in KNOWN:
        cells = []
        for tool in ("bastion", "garak"):
            run = by.get((tool, "weak"))
            cells.append("-" if run is None else ("found" if w in run.found else "missed"))
        line = f"  {w:13s} {DESCRIBE[w]:44s} bastion {cells[0]:7s} garak {cells[1]:7s}"
        garak_weak, garak_clean = by.get(("garak", "weak")), by.get(("garak", "clean"))
        if garak_weak is not None and w in garak_weak.found:
            line += f" by {', '.join(garak_weak.detail['found_by'][w])}"  # type: ignore[index]
            if garak_clean is not None and w in garak_clean.found:
                line += " (also fires on the clean app)"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cap", type=int, default=256, help="garak prompts per probe at most (garak's default)"
    )
    parser.add_argument("--generations", type=int, default=1, help="garak generations per prompt")
    parser.add_argument(
        "--guard-runs",
        type=int,
        default=0,
        help="also run bench_llm_guard's latency measurement with this many requests (0: skip)",
    )
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep garak's reports and logs in this directory"
    )
    args = parser.parse_args()
    prof = profile()
    runs: list[Run] = []
    garak_error: str | None = None
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        if args.keep:
            tmp = args.keep.resolve()
            tmp.mkdir(parents=True, exist_ok=False)
        for weak in (frozenset(WEAKNESSES), frozenset()):
            run = bastion(weak, prof, tmp / f"bastion-{'weak' if weak else 'clean'}")
            runs.append(run)
            print(
                f"bastion {run.app:5s}: {run.detail['attempts']} attempts (attempts: "
                f"{prof.attempts} per template, seed {prof.seed}), {run.requests} requests, "
                f"{run.seconds:.2f} s, found {run.found}"
            )
        garak_error, startup = garak_available()
        if garak_error is None:
            print(f"garak start-up (`garak --version`): {startup:.1f} s, included below")
            for weak in (frozenset(WEAKNESSES), frozenset()):
                try:
                    run = garak(weak, prof, tmp, args)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    garak_error = str(exc)
                    break
                runs.append(run)
                print(
                    f"garak   {run.app:5s}: {len(GARAK_PROBES)} probes, cap {args.cap} prompts "
                    f"each, {args.generations} generation(s), {run.requests} requests, "
                    f"{run.seconds:.1f} s, found {run.found}"
                )
                for key, row in sorted(run.detail["evals"].items()):  # type: ignore[union-attr]
                    probe = key.split("/")[0]
                    mapped = GARAK_PROBES.get(probe) or "(not mapped)"
                    print(f"    {key:75s} {row['fails']:3d}/{row['total']:3d} failed -> {mapped}")
                if run.detail["probes_without_eval"]:
                    print(f"    no eval entry: {run.detail['probes_without_eval']}")
        if garak_error is not None:
            print(f"garak: not available: {garak_error}")
        table(runs)
        print("\nnot detectable by garak here:")
        for w, note in GARAK_NOTES.items():
            print(f"  {w:13s} {note}")
    guard = None
    if args.guard_runs:
        import bench_llm_guard  # this script's directory is on sys.path

        guard = bench_llm_guard.latency(args.guard_runs)
        print(f"\nguard latency (bench_llm_guard.latency, {args.guard_runs} requests per row):")
        for name in ("firewall", "firewall-no-audit"):
            row = guard[name]  # type: ignore[index]
            print(
                f"  {name:18s} added {row['added_request_ms']:.2f} ms/request, "
                f"{row['added_per_token_ms'] * 1000:.0f} µs/streamed token"
            )
    else:
        print("\nguard latency: see benchmarks/bench_llm_guard.py (or pass --guard-runs N)")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "budget": {"cap": args.cap, "generations": args.generations},
                    "runs": [asdict(r) for r in runs],
                    "garak_error": garak_error,
                    "guard_latency": guard,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
