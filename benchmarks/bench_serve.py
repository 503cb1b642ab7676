"""Gateway load benchmark: single-image predict on the digits CNN, on loopback.

    .venv/bin/python benchmarks/bench_serve.py                  # about 2 minutes
    .venv/bin/python benchmarks/bench_serve.py --duration 5 --json out.json
    .venv/bin/python benchmarks/bench_serve.py --model DIR      # a model (guard fitted if absent)
    .venv/bin/python benchmarks/bench_serve.py --set workers=2 --set 'redis_url="redis://…"'

Four servers, each ONE process (uvicorn, one worker, torch with one thread), started and
stopped in turn:

* ``bare``      — a minimal FastAPI + uvicorn endpoint running the same model (the reference);
* ``gateway-open`` — ``bastion serve`` with auth, rate limits, audit and guard all off;
* ``secured``   — API-key auth, both rate limits (set high enough that nothing is refused,
  but every request takes its tokens), validation and metrics; no audit, no guard;
* ``guard-off`` — ``secured`` plus the durable audit log (group commit, SQLite WAL with
  synchronous=FULL: every answer waits for an fsync); no guard;
* ``guard-on``  — the same with every detector of the fitted guard (Mahalanobis,
  reconstruction, z-score, feature squeezing), drift and extraction monitoring.

Load comes from ``wrk`` (Debian package) when installed, else from a bounded asyncio httpx
generator; each run sends the 450 digits test images in turn, at 1 and at 8 connections.
The table gives throughput, p50 and p99 latency, and the non-2xx answers; the p99 added by
the security layers is ``secured`` (and ``guard-off``, with the audit) minus ``bare`` at one
connection. The disk's fsync latency is measured first: no durable answer can beat it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path

import torch
from fastapi import FastAPI, Request

EXTRA_SETTINGS: dict = {}  # --set KEY=JSON: extra serve settings for every gateway row
CONFIGS = ("bare", "gateway-open", "secured", "guard-off", "guard-on")
HIGH_LIMITS = {
    "requests_per_s": 1e6,
    "requests_burst": 1e6,
    "samples_per_s": 1e6,
    "samples_burst": 1e6,
}


# ----------------------------------------------------------------------------- bare server


def bare_app(model_dir: str):
    """The reference: a bare FastAPI endpoint running the model, no security at all."""
    from bastion.models.io import load_model

    state: dict = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        torch.set_num_threads(1)
        state["model"] = load_model(model_dir).module.eval()
        yield

    app = FastAPI(lifespan=lifespan)

    @app.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.post("/v1/predict")
    async def predict(request: Request) -> dict:
        body = await request.json()
        x = torch.tensor(body["inputs"], dtype=torch.float32)
        with torch.inference_mode():
            probs = torch.softmax(state["model"](x), dim=1)
        return {"predictions": probs.argmax(1).tolist(), "probabilities": probs.tolist()}

    return app


def serve_bare(model_dir: str, port: int) -> None:
    import uvicorn

    uvicorn.run(
        bare_app(model_dir), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )


# ----------------------------------------------------------------------------- set-up


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare(work: Path, model: Path | None, clients: int) -> tuple[Path, list[str], list[str]]:
    """Model dir with a fitted guard, the request bodies, and client keys in a fresh DB."""
    from bastion.cli.train import train_and_save
    from bastion.data import load_dataset
    from bastion.guard.guard import Guard, fit_guard
    from bastion.models.io import load_model
    from bastion.store.db import make_engine
    from bastion.store.keys import create_key

    torch.set_num_threads(2)
    digits = load_dataset("digits")
    if model is None:
        model = work / "model"
        print("training the digits CNN ...", flush=True)
        _, acc = train_and_save("digits", "cnn", model, epochs=5, batch_size=64, lr=1e-3, seed=0)
        print(f"  test accuracy {acc:.3f}")
    if not Guard.exists(model):
        print("fitting the guard ...", flush=True)
        loaded = load_model(model)
        fit_guard(loaded.module, digits.train).save(model)
    bodies = [json.dumps({"inputs": [x.tolist()]}, separators=(",", ":")) for x in digits.test.x]
    engine = make_engine(f"sqlite:///{work / 'serve.db'}")
    keys = [create_key(engine, "client", f"bench {i}")[1] for i in range(clients)]
    engine.dispose()
    return model, bodies, keys


def write_config(work: Path, name: str) -> Path:
    open_ = name == "gateway-open"
    cfg = {
        "torch_threads": 1,
        "auth": {"enabled": not open_, "cache_ttl_s": 5.0},
        "rate_limit": {"enabled": not open_, **HIGH_LIMITS},
        "audit": {"enabled": name in ("guard-off", "guard-on")},
        "guard": {"enabled": name == "guard-on", "required": name == "guard-on"},
        "recent_decisions": 200,
    }
    cfg.update(EXTRA_SETTINGS)
    path = work / f"{name}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return path


def start(name: str, work: Path, model: Path, port: int, db: str | None = None) -> subprocess.Popen:
    if name == "bare":
        cmd = [sys.executable, __file__, "--serve-bare", str(model), "--port", str(port)]
    else:
        cmd = [
            sys.executable,
            "-m",
            "bastion.cli",
            "serve",
            "--model",
            str(model),
            "--config",
            str(write_config(work, name)),
            "--db",
            db or f"sqlite:///{work / 'serve.db'}",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ]
    log = open(work / f"{name}.log", "w")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{name} server died: {(work / f'{name}.log').read_text()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit(f"{name} server did not start in 120 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------- load


def wrk_script(work: Path, bodies: list[str], keys: list[str]) -> Path:
    """Each request: the next test image, and the next client key in turn."""
    lua = ["local bodies = {"]
    lua += ["  [==[" + b + "]==]," for b in bodies]
    lua += ["}", "local keys = {"] + [f'  "Bearer {k}",' for k in keys] + ["}"]
    lua += [
        "local i = 0",
        "local k = 0",
        'wrk.method = "POST"',
        "request = function()",
        "  i = i % #bodies + 1",
        "  k = k % #keys + 1",
        '  local h = {["Content-Type"] = "application/json", ["Authorization"] = keys[k]}',
        "  return wrk.format(nil, nil, h, bodies[i])",
        "end",
    ]
    path = work / "bodies.lua"
    path.write_text("\n".join(lua))
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 6e4}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if m is None:
        raise ValueError(f"cannot read wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, script: Path, connections: int, seconds: float) -> dict:
    threads = min(connections, 2)
    out = subprocess.run(
        [
            "wrk",
            f"-t{threads}",
            f"-c{connections}",
            f"-d{seconds:g}s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50_ms": p50,
        "p99_ms": p99,
        "requests": total,
        "non_2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def run_httpx(
    url: str, bodies: list[str], keys: list[str], connections: int, seconds: float
) -> dict:
    """Fallback load generator (bounded in time): ``connections`` concurrent loops."""
    import httpx

    latencies: list[float] = []
    bad = 0

    async def worker(client: httpx.AsyncClient, offset: int, stop_at: float) -> None:
        nonlocal bad
        i = offset
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            headers = {
                "Authorization": f"Bearer {keys[i % len(keys)]}",
                "Content-Type": "application/json",
            }
            r = await client.post(url, content=bodies[i % len(bodies)], headers=headers)
            latencies.append((time.perf_counter() - t) * 1000)
            bad += r.status_code >= 300
            i += connections

    async def main() -> float:
        limits = httpx.Limits(max_connections=connections)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            t0 = time.perf_counter()
            stop_at = t0 + seconds
            await asyncio.gather(*[worker(client, k, stop_at) for k in range(connections)])
            return time.perf_counter() - t0

    elapsed = asyncio.run(main())
    q = statistics.quantiles(latencies, n=100)
    return {
        "rps": len(latencies) / elapsed,
        "p50_ms": q[49],
        "p99_ms": q[98],
        "requests": len(latencies),
        "non_2xx": bad,
        "socket_errors": "",
    }


def verdict_counts(port: int) -> dict[str, float]:
    import httpx

    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return {
        m.group(1): float(m.group(2))
        for m in re.finditer(r'bastion_verdicts_total\{verdict="(\w+)"\} ([\d.e+]+)', text)
    }


def fsync_latency(work: Path, n: int = 200) -> tuple[float, float]:
    """p50 and p99 (ms) of one SQLite commit in WAL mode with synchronous=FULL."""
    import sqlite3

    con = sqlite3.connect(work / "fsync.db", isolation_level=None)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=FULL")
    con.execute("CREATE TABLE t (x)")
    lat = []
    for i in range(n):
        t = time.perf_counter()
        con.execute("BEGIN")
        con.execute("INSERT INTO t VALUES (?)", (i,))
        con.execute("COMMIT")
        lat.append((time.perf_counter() - t) * 1000)
    con.close()
    q = statistics.quantiles(lat, n=100)
    return q[49], q[98]


def guard_pass_per_key_vs_one(model: Path, keys: int = 8, rounds: int = 300) -> tuple[float, float]:
    """Median ms of the guard for a micro-batch of ``keys`` single-image requests from as
    many keys: one guard call per key (before) vs one pass for all (``predict_and_inspect
    _groups``); interleaved, in-process, one torch thread."""
    from bastion.data import load_dataset
    from bastion.guard.guard import Guard
    from bastion.models.io import load_model

    loaded = load_model(model)
    x = load_dataset("digits").test.x
    per_key, one_pass = Guard.load(model, loaded), Guard.load(model, loaded)
    before, after = [], []
    for i in range(rounds):
        batch = x[(i * keys) % 400 : (i * keys) % 400 + keys]
        t0 = time.perf_counter()
        for c in range(keys):
            per_key.predict_and_inspect(batch[c : c + 1], f"key{c}")
        t1 = time.perf_counter()
        one_pass.predict_and_inspect_groups(batch, [(f"key{c}", 1) for c in range(keys)])
        t2 = time.perf_counter()
        before.append(t1 - t0)
        after.append(t2 - t1)
    return statistics.median(before) * 1e3, statistics.median(after) * 1e3


def cpu_per_request(work: Path, model: Path, bodies: list[str], name: str, n: int = 1000) -> float:
    """CPU milliseconds one request costs the server, driven in-process through the ASGI
    app one request at a time (no sockets, no load generator): insensitive to the other
    processes on the machine, unlike the wall-clock figures."""
    from bastion.serve.app import create_app
    from bastion.serve.settings import load_settings
    from bastion.store.db import make_engine
    from bastion.store.keys import create_key

    db = f"sqlite:///{work / f'cpu-{name}.db'}"
    engine = make_engine(db)
    key = create_key(engine, "client")[1]
    engine.dispose()
    app = create_app(load_settings(write_config(work, name), model_dir=model, db_url=db))
    raw = [b.encode() for b in bodies]

    async def call(body: bytes) -> int:
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"authorization", f"Bearer {key}".encode()),
        ]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/v1/predict",
            "raw_path": b"/v1/predict",
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("127.0.0.1", 80),
        }
        messages = [{"type": "http.request", "body": body, "more_body": False}]
        sent: list[dict] = []

        async def receive() -> dict:
            return messages.pop() if messages else {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return sent[0]["status"]

    async def go() -> float:
        async with app.router.lifespan_context(app):
            for i in range(100):
                await call(raw[i % len(raw)])
            c0 = time.process_time()
            codes = {await call(raw[i % len(raw)]) for i in range(n)}
            cpu = time.process_time() - c0
        if not codes <= {200, 202, 403}:
            raise SystemExit(f"{name}: unexpected answers {codes}")
        return 1000 * cpu / n

    return asyncio.run(go())


def loadavg() -> str:
    try:
        return " ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:
        return "?"


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=3.0)
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    ap.add_argument("--clients", type=int, default=1, help="API keys used in turn")
    ap.add_argument("--cpu", action="store_true", help="also measure CPU ms per request in-process")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--generator", choices=["auto", "wrk", "httpx"], default="auto")
    ap.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a top-level serve setting for every gateway row, e.g. inline_max_samples=0",
    )
    ap.add_argument("--serve-bare", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve_bare:
        serve_bare(args.serve_bare, args.port)
        return
    for item in args.set:
        key, _, value = item.partition("=")
        EXTRA_SETTINGS[key] = json.loads(value)
    use_wrk = args.generator == "wrk" or (args.generator == "auto" and shutil.which("wrk"))
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        model, bodies, keys = prepare(work, args.model, args.clients)
        script = wrk_script(work, bodies, keys) if use_wrk else None
        f50, f99 = fsync_latency(work)
        print(
            f"load generator: {'wrk' if use_wrk else 'httpx (asyncio)'}; cores: {os.cpu_count()}; "
            f"clients: {args.clients}; load average before: {loadavg()}; "
            f"SQLite durable commit p50 {f50:.2f} ms, p99 {f99:.2f} ms",
            flush=True,
        )
        if args.cpu:
            torch.set_num_threads(1)
            before, after = guard_pass_per_key_vs_one(model)
            print(
                f"guard for 8 requests from 8 keys: one call per key {before:.2f} ms, one pass "
                f"{after:.2f} ms ({before / after:.2f}x)"
            )
            for name in args.configs:
                if name != "bare":
                    ms = cpu_per_request(work, model, bodies, name)
                    print(f"{name:>12}  CPU {ms:.3f} ms per request (in-process, one at a time)")
        results = []
        for name in args.configs:
            port = free_port()
            proc = start(name, work, model, port)
            url = f"http://127.0.0.1:{port}/v1/predict"
            try:
                for conns in args.connections:
                    if use_wrk:
                        run_wrk(url, script, conns, args.warmup)
                        row = run_wrk(url, script, conns, args.duration)
                    else:
                        run_httpx(url, bodies, keys, conns, args.warmup)
                        row = run_httpx(url, bodies, keys, conns, args.duration)
                    row.update(config=name, connections=conns, clients=args.clients, load=loadavg())
                    results.append(row)
                    print(
                        f"{name:>12}  c={conns}  {row['rps']:8.0f} req/s  p50 {row['p50_ms']:6.2f} ms"
                        f"  p99 {row['p99_ms']:6.2f} ms  non-2xx {row['non_2xx']}  "
                        f"load {row['load']}",
                        flush=True,
                    )
                if name in ("guard-off", "guard-on"):
                    results[-1]["verdicts"] = verdict_counts(port)
                    print(f"{'':>12}  verdicts: {results[-1]['verdicts']}")
            finally:
                stop(proc)
        report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(results: list[dict]) -> None:
    print("\n| server | conns | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['config']} | {r['connections']} | {r['rps']:.0f} | {r['p50_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['non_2xx']} |"
        )
    get = {(r["config"], r["connections"]): r for r in results}
    if ("bare", 1) in get:
        for name in ("gateway-open", "secured", "guard-off", "guard-on"):
            if (name, 1) in get:
                added = get[(name, 1)]["p99_ms"] - get[("bare", 1)]["p99_ms"]
                print(f"p99 added at 1 connection by {name}: {added:+.2f} ms")
    if ("guard-on", 8) in get:
        rps = get[("guard-on", 8)]["rps"]
        print(f"guard-on at 8 connections: {rps:.0f} req/s (target >= 1000)")


if __name__ == "__main__":
    main()
