"""LLM firewall benchmark: the input scanners' detection and false-positive rates, and the
latency `bastion serve --upstream` adds per request and per streamed token.

    .venv/bin/python benchmarks/bench_llm_guard.py                 # about a minute
    .venv/bin/python benchmarks/bench_llm_guard.py --runs 300 --json out.json

Rates: attack prompts from :mod:`bastion.llm.payloads` generated with the held-out seed
(:data:`bastion.llm.firewall.corpus.HELD_OUT_SEED`; the heuristics were tuned on seed 0),
hand-written attacks in none of the templates' wordings, the benign prompts used while
tuning and the held-out benign prompts written afterwards; at the default ``hold_at``
(a request not let through unreviewed) and ``block_at`` (refused outright).

Latency: the fake OpenAI-compatible upstream of the tests (in this process, one thread)
answers a fixed 600-character text, in 4-character SSE chunks when streaming (a chunk is
one "token" here). Each request is sent in turn (one connection, keep-alive) directly to
the upstream and through a real ``bastion serve --upstream`` process (one uvicorn worker,
auth, both rate limits, all scanners, a profile with a canary, and the durable SQLite audit
log; then the same with ``audit.enabled: false``). Medians over ``--runs`` requests; the
added latency per request is firewall − direct; per streamed token, the added time to the
last chunk divided by the chunks.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.llm.conftest import APP_YAML  # noqa: E402
from tests.llm.fake_llm import FakeLLM  # noqa: E402
from tests.ports import free_port  # noqa: E402

from bastion.llm.firewall import corpus  # noqa: E402
from bastion.llm.firewall.config import FirewallSettings  # noqa: E402
from bastion.llm.firewall.injection import score_text  # noqa: E402
from bastion.llm.firewall.scanners import Firewall  # noqa: E402
from bastion.store.db import make_engine  # noqa: E402
from bastion.store.keys import create_key  # noqa: E402

ANSWER_CHARS = 600
CHUNK = 4


def rates() -> dict[str, object]:
    fw = FirewallSettings(upstream="openai+http://x/v1").input.injection
    attacks = corpus.attack_split(corpus.HELD_OUT_SEED)
    out: dict[str, object] = {"hold_at": fw.hold_at, "block_at": fw.block_at}

    def share(texts: list[str], at: float) -> float:
        return sum(score_text(t).score >= at for t in texts) / len(texts)

    families = sorted({a.family for a in attacks})
    out["families"] = {
        f: {
            "n": sum(a.family == f for a in attacks),
            "detected": share([a.text for a in attacks if a.family == f], fw.hold_at),
            "blocked": share([a.text for a in attacks if a.family == f], fw.block_at),
        }
        for f in families
    }
    texts = [a.text for a in attacks]
    out["held_out"] = {
        "n": len(texts),
        "detected": share(texts, fw.hold_at),
        "blocked": share(texts, fw.block_at),
    }
    out["unseen"] = {
        "n": len(corpus.UNSEEN_ATTACKS),
        "detected": share(corpus.UNSEEN_ATTACKS, fw.hold_at),
        "blocked": share(corpus.UNSEEN_ATTACKS, fw.block_at),
    }
    for name, texts in (
        ("benign_tuning", corpus.BENIGN),
        ("benign_held_out", corpus.BENIGN_HELD_OUT),
    ):
        out[name] = {
            "n": len(texts),
            "fp_hold": share(texts, fw.hold_at),
            "fp_block": share(texts, fw.block_at),
            "flagged": [t for t in texts if score_text(t).score >= fw.hold_at],
        }
    scanner = Firewall(FirewallSettings(upstream="openai+http://x/v1"))
    every = [{"role": "user", "content": t} for t in corpus.BENIGN + texts]
    start = time.perf_counter()
    for m in every:
        scanner.scan_input([m])
    out["input_scan_ms"] = (time.perf_counter() - start) / len(every) * 1000
    return out


def _time_plain(client: httpx.Client, url: str, headers: dict[str, str], body: dict) -> float:
    start = time.perf_counter()
    r = client.post(url, json=body, headers=headers)
    r.raise_for_status()
    return time.perf_counter() - start


def _time_stream(
    client: httpx.Client, url: str, headers: dict[str, str], body: dict
) -> tuple[float, float, int]:
    start = time.perf_counter()
    first, events = None, 0
    with client.stream("POST", url, json={**body, "stream": True}, headers=headers) as r:
        r.raise_for_status()
        for line in r.iter_lines():
            if not line.startswith("data:") or line.endswith("[DONE]"):
                continue
            events += 1
            if first is None:
                choices = json.loads(line[5:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    first = time.perf_counter() - start
    return first or 0.0, time.perf_counter() - start, events


def _serve(tmp: Path, upstream: str, key_db: str, audit: bool) -> tuple[subprocess.Popen, str]:
    (tmp / "app.yaml").write_text(APP_YAML + "canary:\n  token: BSTN-BENCHCANARY01\n")
    (tmp / "serve.yaml").write_text(
        "firewall:\n  profile: app.yaml\n  tokens_per_s: 1000000000\n  tokens_burst: 1000000000\n"
        "rate_limit:\n  requests_per_s: 1000000\n  requests_burst: 1000000\n"
        f"audit:\n  enabled: {'true' if audit else 'false'}\n"
    )
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "bastion.cli",
        "serve",
        "--upstream",
        upstream,
        "--config",
        str(tmp / "serve.yaml"),
        "--db",
        key_db,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "BASTION_LOG": "WARNING"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=2).status_code == 200:
                return proc, base
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("the firewall did not start")


def latency(runs: int) -> dict[str, object]:
    text = ("The parcel ships within two days and returns are free. " * 20)[:ANSWER_CHARS]
    body = {
        "model": "m",
        "messages": [
            {
                "role": "system",
                "content": "You are a shop assistant. Reference BSTN-BENCHCANARY01.",
            },
            {
                "role": "user",
                "content": f"Reply with exactly the text between the marks: ««{text}»»",
            },
        ],
    }
    out: dict[str, object] = {"answer_chars": ANSWER_CHARS, "chunk_chars": CHUNK, "runs": runs}
    with FakeLLM({"markup"}, chunk_chars=CHUNK) as fake, tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        db = f"sqlite:///{tmp / 'bench.db'}"
        engine = make_engine(db)
        _, secret = create_key(engine, "client", "bench")
        engine.dispose()
        targets = {"direct": (fake.url.removeprefix("openai+"), {})}
        procs = []
        for name, audit in (("firewall", True), ("firewall-no-audit", False)):
            sub = tmp / name
            sub.mkdir()
            proc, base = _serve(sub, fake.url, db, audit)
            procs.append(proc)
            targets[name] = (f"{base}/v1", {"Authorization": f"Bearer {secret}"})
        try:
            for name, (base, headers) in targets.items():
                url = f"{base}/chat/completions"
                with httpx.Client(timeout=30) as client:
                    for _ in range(10):  # warm-up
                        _time_plain(client, url, headers, body)
                        _time_stream(client, url, headers, body)
                    plain = [_time_plain(client, url, headers, body) for _ in range(runs)]
                    streams = [_time_stream(client, url, headers, body) for _ in range(runs)]
                out[name] = {
                    "request_ms": statistics.median(plain) * 1000,
                    "stream_first_ms": statistics.median(s[0] for s in streams) * 1000,
                    "stream_total_ms": statistics.median(s[1] for s in streams) * 1000,
                    "stream_events": statistics.median(s[2] for s in streams),
                }
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(timeout=30)
    chunks = ANSWER_CHARS / CHUNK
    direct = out["direct"]
    for name in ("firewall", "firewall-no-audit"):
        row = out[name]
        row["added_request_ms"] = row["request_ms"] - direct["request_ms"]
        row["added_per_token_ms"] = (row["stream_total_ms"] - direct["stream_total_ms"]) / chunks
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    r = rates()
    print(
        f"held-out attacks (seed {corpus.HELD_OUT_SEED}), thresholds hold {r['hold_at']} / block {r['block_at']}"
    )
    for fam, row in r["families"].items():  # type: ignore[union-attr]
        print(
            f"  {fam:28s} n={row['n']:3d} detected {row['detected']:.2f} blocked {row['blocked']:.2f}"
        )
    for name in ("held_out", "unseen"):
        row = r[name]
        print(
            f"{name:30s} n={row['n']:3d} detected {row['detected']:.2f} blocked {row['blocked']:.2f}"
        )
    for name in ("benign_tuning", "benign_held_out"):
        row = r[name]
        print(
            f"{name:30s} n={row['n']:3d} FP(hold) {row['fp_hold']:.3f} FP(block) {row['fp_block']:.3f} {row['flagged']}"
        )
    print(
        f"input scan: {r['input_scan_ms']:.3f} ms per prompt (mean over the benign and held-out prompts)"
    )
    lat = latency(args.runs)
    print(
        f"latency, median of {args.runs} sequential requests, {ANSWER_CHARS}-char answer, {CHUNK}-char chunks"
    )
    for name in ("direct", "firewall", "firewall-no-audit"):
        row = lat[name]
        extra = ""
        if name != "direct":
            extra = f"  added {row['added_request_ms']:.2f} ms/request, {row['added_per_token_ms'] * 1000:.1f} µs/streamed token"
        print(
            f"  {name:18s} request {row['request_ms']:.2f} ms  stream first {row['stream_first_ms']:.2f} ms "
            f"total {row['stream_total_ms']:.2f} ms ({row['stream_events']:.0f} events){extra}"
        )
    if args.json:
        args.json.write_text(json.dumps({"rates": r, "latency": lat}, indent=2))


if __name__ == "__main__":
    main()
