"""Gateway replicas: throughput and latency of 1, 2 and 4 `bastion serve` processes behind
nginx, sharing the store (keys, reviews, the audit log) on PostgreSQL and the guard's state
and the rate limits on Redis; and what that shared state adds to one replica.

    make bench-setup                                    # wrk and nginx (Debian), once
    .venv/bin/python benchmarks/bench_replicas.py       # about 3 minutes
    .venv/bin/python benchmarks/bench_replicas.py --replicas 1 2 --duration 5 --json out.json

Every row is the digits CNN with every guard on (all detectors, drift, extraction and query
monitors), API-key auth, both rate limits (high enough that nothing is refused) and the
durable audit log, the same as bench_serve.py's ``guard-on``; single-image requests from 8
keys in turn, load from ``wrk`` (2 threads). Rows:

* ``local``   — one replica on loopback, SQLite store, the guard's state in the process;
* ``shared``  — one replica on loopback, PostgreSQL store + Redis shared state: the difference
  to ``local`` at one connection is the latency the shared state adds;
* ``nginx×N`` — N replicas (PostgreSQL + Redis) behind one nginx (round robin, keep-alive
  upstream connections).

All processes share this machine's cores (``os.cpu_count()`` is printed): replicas add
throughput only while cores are free; the table says what they cost here, not what a
cluster would do. A fresh PostgreSQL database is created for the run and dropped after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import bench_serve as serve  # the shared set-up, load and server helpers

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"


def make_database() -> tuple[str, str]:
    """A fresh database for this run: (its URL, its name)."""
    import psycopg

    name = f"bench_replicas_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return PG_ADMIN.rsplit("/", 1)[0] + f"/{name}", name


def drop_database(name: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_keys(url: str, n: int) -> list[str]:
    from bastion.store.db import make_engine
    from bastion.store.keys import create_key

    engine = make_engine(url)
    keys = [create_key(engine, "client", f"bench {i}")[1] for i in range(n)]
    engine.dispose()
    return keys


def nginx_conf(work: Path, port: int, upstreams: list[int]) -> Path:
    servers = "\n".join(f"    server 127.0.0.1:{p};" for p in upstreams)
    text = f"""
worker_processes 1;
daemon off;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {work}/nginx-body;
  proxy_temp_path {work}/nginx-proxy;
  fastcgi_temp_path {work}/nginx-fastcgi;
  uwsgi_temp_path {work}/nginx-uwsgi;
  scgi_temp_path {work}/nginx-scgi;
  upstream bastion {{
{servers}
    keepalive 32;
  }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://bastion;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
    }}
  }}
}}
"""
    path = work / f"nginx-{len(upstreams)}.conf"
    path.write_text(text)
    return path


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout_s: float = 30) -> None:
    import socket

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"{what} did not listen within {timeout_s:.0f} s")


def measure(url: str, script: Path, conns: list[int], args: argparse.Namespace) -> list[dict]:
    rows = []
    for c in conns:
        serve.run_wrk(url, script, c, args.warmup)
        row = serve.run_wrk(url, script, c, args.duration)
        row.update(connections=c, load=serve.loadavg())
        rows.append(row)
    return rows


def start_replicas(
    work: Path, model: Path, n: int, settings: dict, tag: str
) -> tuple[list[subprocess.Popen], list[int]]:
    serve.EXTRA_SETTINGS.clear()
    serve.EXTRA_SETTINGS.update(settings)
    procs, ports = [], []
    try:
        for i in range(n):
            port = serve.free_port()
            folder = work / f"{tag}-{i}"
            folder.mkdir(exist_ok=True)
            procs.append(serve.start("guard-on", folder, model, port, db=settings["db_url"]))
            ports.append(port)
    except BaseException:
        for p in procs:
            serve.stop(p)
        raise
    return procs, ports


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--model", type=Path, default=None, help="a digits model dir (trained if absent)"
    )
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--connections", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--duration", type=float, default=6.0, help="seconds per measured run")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--clients", type=int, default=8, help="API keys used in turn")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    for tool in ("wrk", "nginx"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            raise SystemExit(f"{tool} is not installed: run `make bench-setup`")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    for why in (serve_unreachable(),):
        if why:
            raise SystemExit(why)
    work = Path(tempfile.mkdtemp(prefix="bench-replicas-"))
    pg_url, pg_name = make_database()
    results: list[dict] = []
    try:
        model, bodies, local_keys = serve.prepare(work, args.model, args.clients)
        local_db = f"sqlite:///{work / 'serve.db'}"
        shared_keys = make_keys(pg_url, args.clients)
        print(
            f"cores: {os.cpu_count()}; load average before: {serve.loadavg()}; "
            f"PostgreSQL database {pg_name}; Redis {REDIS}",
            flush=True,
        )
        shared = {"db_url": pg_url, "redis_url": REDIS}
        plan = [("local", 1, {"db_url": local_db}, local_keys, False)]
        plan.append(("shared", 1, shared, shared_keys, False))
        plan += [(f"nginx×{n}", n, shared, shared_keys, True) for n in args.replicas]
        for name, n, settings, keys, proxied in plan:
            (work / name).mkdir(exist_ok=True)
            script = serve.wrk_script(work / name, bodies, keys)
            prefix = {"redis_prefix": f"bench{uuid.uuid4().hex[:8]}"}
            procs, ports = start_replicas(work, model, n, {**settings, **prefix}, name)
            proxy = None
            try:
                port = ports[0]
                if proxied:
                    port = serve.free_port()
                    conf = nginx_conf(work, port, ports)
                    proxy = subprocess.Popen(
                        [nginx, "-c", str(conf), "-p", str(work)],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.STDOUT,
                    )
                    wait_port(port, proxy, "nginx")
                for row in measure(
                    f"http://127.0.0.1:{port}/v1/predict", script, args.connections, args
                ):
                    row.update(setup=name, replicas=n)
                    results.append(row)
                    print(
                        f"{name:>9}  c={row['connections']}  {row['rps']:7.0f} req/s  "
                        f"p50 {row['p50_ms']:6.2f} ms  p99 {row['p99_ms']:6.2f} ms  "
                        f"non-2xx {row['non_2xx']}  load {row['load']}",
                        flush=True,
                    )
            finally:
                if proxy is not None:
                    proxy.terminate()
                    proxy.wait(timeout=10)
                for p in procs:
                    serve.stop(p)
        report(results)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2))
    finally:
        drop_database(pg_name)
        shutil.rmtree(work, ignore_errors=True)


def serve_unreachable() -> str | None:
    """Why PostgreSQL or Redis cannot be used here (None when both answer)."""
    try:
        import psycopg
        import redis
    except ImportError:
        return "psycopg and redis are needed: pip install -e '.[scale]'"
    try:
        with psycopg.connect(PG_ADMIN, connect_timeout=3):
            pass
        redis.Redis.from_url(REDIS, socket_connect_timeout=2).ping()
    except (psycopg.Error, redis.RedisError, OSError) as exc:
        return f"PostgreSQL ({PG_ADMIN}) and Redis ({REDIS}) must run: {exc}"
    return None


def report(results: list[dict]) -> None:
    print("\n| setup | replicas | conns | req/s | p50 ms | p99 ms | non-2xx |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['setup']} | {r['replicas']} | {r['connections']} | {r['rps']:.0f} | "
            f"{r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['non_2xx']} |"
        )
    by = {(r["setup"], r["connections"]): r for r in results}
    if ("local", 1) in by and ("shared", 1) in by:
        added = by[("shared", 1)]["p50_ms"] - by[("local", 1)]["p50_ms"]
        print(f"\nshared state (PostgreSQL + Redis) adds {added:+.2f} ms p50 at one connection")


if __name__ == "__main__":
    main()
