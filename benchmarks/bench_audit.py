"""Audit-log benchmark: durable appends/s (single commits, batches, GroupCommitter) on
SQLite and PostgreSQL, full-verification entries/s, inclusion proofs/s.

    .venv/bin/python benchmarks/bench_audit.py               # full run (about a minute)
    .venv/bin/python benchmarks/bench_audit.py --quick       # smaller log, shorter runs
    .venv/bin/python benchmarks/bench_audit.py --no-postgres --json out.json

Every append is durable when counted: SQLite in WAL mode with synchronous=FULL (an fsync
per commit), PostgreSQL with synchronous_commit=on. Entries are gateway-like decisions of
about 250 bytes of canonical JSON. The machine's bare hashlib speed is printed first, since
verification cannot beat about half of it (a leaf hash and an interior node per entry).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.audit import AuditLog, GroupCommitter, leaf_hash, verify_inclusion
from bastion.audit.log import canonical_json

PG_URL = os.environ.get("BASTION_BENCH_PG", "postgresql://postgres@127.0.0.1:5432/test")


def decision(i: int) -> dict:
    return {
        "event": "predict",
        "key_id": f"key_{i % 97:04d}",
        "input_sha256": hashlib.sha256(i.to_bytes(8, "big")).hexdigest(),
        "scores": {"mahalanobis": 1.25 + (i % 13) / 7, "recon": 0.0123, "squeeze": 0.004},
        "verdict": "allow",
        "model_sha256": "9f" * 32,
        "latency_ms": 3.21,
        "ts": 1.7e9 + i,
    }


def bare_rehash_rate(n: int = 200_000) -> float:
    entries = [canonical_json(decision(i)) for i in range(n)]
    t = time.perf_counter()
    [hashlib.sha256(b"\x00" + e).digest() for e in entries]
    return n / (time.perf_counter() - t)


def timed(seconds: float, step) -> tuple[int, float]:
    """Call ``step()`` (returns entries done) until ``seconds`` pass; (entries, elapsed)."""
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        done += step()
    return done, time.perf_counter() - t0


def bench_single(log: AuditLog, seconds: float) -> float:
    counter = iter(range(10**9))
    done, dt = timed(seconds, lambda: (log.append(decision(next(counter))), 1)[1])
    return done / dt


def bench_batches(
    log: AuditLog, batch: int, seconds: float, *, encoded: bool
) -> tuple[float, float]:
    """(durable appends/s, CPU µs per entry) for back-to-back batches."""
    base = log.size()
    pool = [decision(base + i) for i in range(batch)]
    blobs = [canonical_json(e) for e in pool]

    def step() -> int:
        if encoded:
            log.append_encoded(blobs)
        else:
            log.append_many(pool)
        return batch

    cpu = time.process_time()
    done, dt = timed(seconds, step)
    return done / dt, (time.process_time() - cpu) / done * 1e6


def bench_committer(
    log: AuditLog, clients: int, seconds: float, max_batch: int = 512
) -> tuple[float, float, float, float, float]:
    """``clients`` coroutines submitting back to back; (appends/s, p50 ms, p99 ms, mean batch,
    CPU µs per entry of the whole process: event loop + commit thread)."""

    pool = [decision(i) for i in range(8192)]  # made beforehand: measure the log, not this

    async def main() -> tuple[int, list[float], float, GroupCommitter]:
        gc = GroupCommitter(log, max_batch=max_batch, max_delay_ms=0.0)
        await gc.start()
        lat: list[float] = []
        stop_at = time.perf_counter() + seconds

        async def client(c: int) -> int:
            n = 0
            clock = time.perf_counter
            while clock() < stop_at:
                t = clock()
                await gc.submit(pool[(c + n) & 8191])
                lat.append(clock() - t)
                n += 1
            return n

        t0 = time.perf_counter()
        counts = await asyncio.gather(*[client(c) for c in range(clients)])
        dt = time.perf_counter() - t0
        await gc.stop()
        return sum(counts), lat, dt, gc

    cpu = time.process_time()
    n, lat, dt, gc = asyncio.run(main())
    cpu = (time.process_time() - cpu) / n * 1e6
    q = statistics.quantiles(lat, n=100)
    return n / dt, q[49] * 1e3, q[98] * 1e3, gc.committed / max(gc.batches, 1), cpu


def build_log(path: Path, n: int, key: Ed25519PrivateKey) -> AuditLog:
    log = AuditLog.open(f"sqlite:///{path}", signing_key=key, checkpoint_every=1000)
    blobs = [canonical_json(decision(i)) for i in range(n)]
    for s in range(0, n, 512):
        log.append_encoded(blobs[s : s + 512])
    return log


def bench_proofs(log: AuditLog, count: int) -> tuple[float, float]:
    size = log.size()
    root = log.root()
    log.inclusion_proof(0)  # builds the in-memory tree once
    rng = random.Random(0)
    idx = [rng.randrange(size) for _ in range(count)]
    t = time.perf_counter()
    proofs = [log.inclusion_proof(i, size) for i in idx]
    gen = count / (time.perf_counter() - t)
    leaves = [log.leaf_hash(i) for i in idx]
    t = time.perf_counter()
    ok = all(
        verify_inclusion(lh, i, size, p, root) for lh, i, p in zip(leaves, idx, proofs, strict=True)
    )
    chk = count / (time.perf_counter() - t)
    if not ok:
        raise SystemExit("an inclusion proof failed to verify")
    assert verify_inclusion(leaf_hash(log.entry_bytes(idx[0])), idx[0], size, proofs[0], root)
    return gen, chk


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller log and shorter timings")
    ap.add_argument("--verify-n", type=int, default=None, help="entries in the verified log")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per append measurement")
    ap.add_argument("--no-postgres", action="store_true")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args()
    secs = args.seconds or (1.0 if args.quick else 3.0)
    verify_n = args.verify_n or (200_000 if args.quick else 1_000_000)
    key = Ed25519PrivateKey.generate()
    rows: list[tuple[str, str, float]] = []

    def add(backend: str, what: str, value: float, unit: str = "/s") -> None:
        rows.append((backend, what, value))
        shown = f"{value:>12,.0f}" if value >= 100 else f"{value:>12.2f}"
        print(f"{backend:10s} {what:52s} {shown} {unit}", flush=True)

    print(f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    add("cpu", "bare SHA-256 leaf re-hash (hashlib)", bare_rehash_rate())
    add("cpu", "canonical JSON encodings", 50_000 / _time_json(50_000))

    with tempfile.TemporaryDirectory(dir=os.environ.get("BASTION_BENCH_DIR")) as tmp:
        tmp_path = Path(tmp)
        with AuditLog.open(f"sqlite:///{tmp_path / 'append.db'}", signing_key=key) as log:
            add("sqlite", "single-entry commits (append)", bench_single(log, secs))
            for b in (100, 512, 4096):
                rate, cpu = bench_batches(log, b, secs, encoded=False)
                add("sqlite", f"append_many, batches of {b}", rate)
                add("sqlite", f"  CPU per entry (batches of {b}, JSON included)", cpu, "µs")
            rate, cpu = bench_batches(log, 4096, secs, encoded=True)
            add("sqlite", "append_encoded, batches of 4096 (no JSON)", rate)
            add("sqlite", "  CPU per entry (batches of 4096, no JSON)", cpu, "µs")
            for clients, max_batch in ((64, 512), (1024, 512), (4096, 4096)):
                rate, p50, p99, mean, cpu = bench_committer(log, clients, secs, max_batch)
                add("sqlite", f"GroupCommitter, {clients} clients, max_batch {max_batch}", rate)
                add("sqlite", "  CPU per entry (loop + commit thread, JSON included)", cpu, "µs")
                add("sqlite", f"  submit latency p50 ms (mean batch {mean:.0f})", p50, "ms")
                add("sqlite", "  submit latency p99 ms", p99, "ms")
            ok = log.verify(key.public_key())
            if not ok.ok:
                raise SystemExit(f"append log does not verify: {ok.message}")

        if not args.no_postgres:
            _bench_postgres(key, secs, add)

        t = time.perf_counter()
        log = build_log(tmp_path / "verify.db", verify_n, key)
        print(f"(built a log of {verify_n:,} entries in {time.perf_counter() - t:.1f} s)")
        best, cpu_best = None, None
        for _ in range(3):
            cpu = time.process_time()
            result = log.verify(key.public_key())
            cpu = time.process_time() - cpu
            if not result.ok:
                raise SystemExit(result.message)
            best = result.seconds if best is None else min(best, result.seconds)
            cpu_best = cpu if cpu_best is None else min(cpu_best, cpu)
        add(
            "sqlite",
            f"full verification ({verify_n:,} entries, {result.heads_checked} heads)",
            verify_n / best,
        )
        add("sqlite", "  CPU per verified entry", cpu_best / verify_n * 1e6, "µs")
        if not args.quick:
            result = log.verify(key.public_key(), workers=2)
            add("sqlite", "full verification, 2 worker processes", verify_n / result.seconds)
        gen, chk = bench_proofs(log, 20_000)
        add("sqlite", f"inclusion proofs generated ({verify_n:,}-entry tree)", gen)
        add("any", "inclusion proofs checked (verify_inclusion)", chk)
        log.close()

    if args.json:
        args.json.write_text(
            json.dumps([{"backend": b, "what": w, "value": v} for b, w, v in rows], indent=2)
        )


def _time_json(n: int) -> float:
    items = [decision(i) for i in range(n)]
    t = time.perf_counter()
    for e in items:
        canonical_json(e)
    return time.perf_counter() - t


def _bench_postgres(key: Ed25519PrivateKey, secs: float, add) -> None:
    schema = f"bastion_audit_bench_{uuid.uuid4().hex[:10]}"
    try:
        log = AuditLog.open(PG_URL, signing_key=key, schema=schema)
    except Exception as exc:
        print(f"postgres   skipped: {exc}")
        return
    try:
        add("postgres", "single-entry commits (append)", bench_single(log, secs))
        for b in (512, 4096):
            rate, cpu = bench_batches(log, b, secs, encoded=False)
            add("postgres", f"append_many, batches of {b}", rate)
            add("postgres", f"  CPU per entry (batches of {b}, JSON included)", cpu, "µs")
        rate, p50, p99, mean, cpu = bench_committer(log, 4096, secs, 4096)
        add("postgres", "GroupCommitter, 4096 clients, max_batch 4096", rate)
        add("postgres", "  CPU per entry (loop + commit thread, JSON included)", cpu, "µs")
        add("postgres", f"  submit latency p50 ms (mean batch {mean:.0f})", p50, "ms")
        add("postgres", "  submit latency p99 ms", p99, "ms")
        t = time.perf_counter()
        result = log.verify(key.public_key())
        if not result.ok:
            raise SystemExit(result.message)
        add(
            "postgres",
            f"full verification ({result.size:,} entries)",
            result.size / (time.perf_counter() - t),
        )
    finally:
        log.backend.drop_schema()  # type: ignore[attr-defined]
        log.close()


if __name__ == "__main__":
    main()
