"""`bastion serve --workers 2`: two real worker processes on one port, sharing rate limits
and the guard's state through Redis and one SQLite record store: both workers serve, a
key's budget is one budget, concurrent answers leave one audit log that verifies with every
acknowledged request in it, and Ctrl-C stops every worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bastion.audit.sth import generate_key_file
from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.ports import free_port
from tests.processes import stop, wait_healthy
from tests.serve.test_replicas import _guarded_model, _logged_request_ids, sign_and_verify
from tests.services import REDIS_URL, redis_unreachable

pytestmark = [pytest.mark.slow, pytest.mark.redis]
BURST, RATE = 12, 0.5


@dataclass
class Workers:
    base: str
    proc: subprocess.Popen
    keys: dict[str, str]
    db_url: str
    key_file: Path
    log: Path

    def children(self) -> list[int]:
        out = subprocess.run(
            ["pgrep", "-P", str(self.proc.pid), "-f", "multiprocessing.spawn"],
            capture_output=True,
            text=True,
        ).stdout
        return [int(p) for p in out.split()]


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


@pytest.fixture(scope="module")
def workers(digits, digits_model_dir, tmp_path_factory) -> Iterator[Workers]:
    reason = redis_unreachable()
    if reason:
        pytest.skip(reason)
    import redis

    tmp = tmp_path_factory.mktemp("workers")
    model = _guarded_model(digits_model_dir, digits.train, tmp / "model")
    db = f"sqlite:///{tmp / 'store.db'}"
    engine = make_engine(db)
    keys = {}
    for name in ("limited", *(f"load{i}" for i in range(4))):
        keys[name] = create_key(engine, "client", name)[1]
    engine.dispose()
    key_file = tmp / "audit.key"
    generate_key_file(key_file)
    prefix = f"bastion-test-{uuid.uuid4().hex[:12]}"
    config = tmp / "serve.yaml"
    config.write_text(
        f"redis_prefix: {prefix}\n"
        f"rate_limit: {{requests_per_s: {RATE}, requests_burst: {BURST}}}\n"
        f"audit: {{key_file: {key_file}, checkpoint_every: 50}}\n"
        "reviews: {check_every_s: 3600}\n"
    )
    port = free_port()
    cmd = [sys.executable, "-m", "bastion.cli", "serve", "--model", str(model), "--db", db]
    cmd += ["--config", str(config), "--port", str(port), "--redis-url", REDIS_URL]
    cmd += ["--workers", "2", "--log-level", "warning"]
    log = tmp / "serve.log"
    env = {**os.environ, "BASTION_LOG": "WARNING"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base, log.read_text, timeout_s=150)
        deadline = time.monotonic() + 60  # the second worker may still be loading
        ready = Workers(base, proc, keys, db, key_file, log)
        while len(ready.children()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        yield ready
    finally:
        stop(proc)
        client = redis.Redis.from_url(REDIS_URL)
        for k in client.scan_iter(f"{prefix}:*"):
            client.delete(k)


def _predict(base: str, secret: str, body: dict) -> httpx.Response:
    """One request on a fresh connection: the kernel picks the worker that accepts it."""
    with httpx.Client(base_url=base, timeout=30) as client:
        return client.post("/v1/predict", json=body, headers={"Authorization": f"Bearer {secret}"})


def test_both_workers_serve_and_the_log_verifies(workers, digits):
    kids = workers.children()
    assert len(kids) == 2, workers.log.read_text()[-2000:]
    before = {pid: _cpu_ticks(pid) for pid in kids}
    acked: list[str] = []
    lock = threading.Lock()

    def client(i: int) -> None:
        for j in range(10):
            body = {"inputs": digits.test.x[i * 10 + j : i * 10 + j + 1].tolist()}
            r = _predict(workers.base, workers.keys[f"load{i}"], body)
            if r.status_code == 200:
                with lock:
                    acked.append(r.json()["request_id"])

    threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(acked) == 40
    busy = [pid for pid in kids if _cpu_ticks(pid) - before[pid] >= 5]  # ≥ 50 ms of CPU
    assert len(busy) == 2, (before, {pid: _cpu_ticks(pid) for pid in kids})
    assert set(acked) <= _logged_request_ids(workers.db_url)
    done = sign_and_verify(workers.db_url, workers.key_file)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_keys_budget_is_one_budget_across_workers(workers, digits):
    body = {"inputs": digits.test.x[:1].tolist()}
    start = time.monotonic()
    codes = [_predict(workers.base, workers.keys["limited"], body).status_code for _ in range(30)]
    elapsed = time.monotonic() - start
    allowed = codes.count(200)
    # a budget per worker would have let up to 2 × BURST through
    assert BURST <= allowed <= BURST + RATE * elapsed + 1, (allowed, elapsed)
    assert set(codes) == {200, 429}


def test_ctrl_c_stops_every_worker(workers):
    kids = workers.children()
    workers.proc.send_signal(signal.SIGINT)
    assert workers.proc.wait(timeout=60) == 0, workers.log.read_text()[-2000:]
    deadline = time.monotonic() + 10
    while any(Path(f"/proc/{pid}").exists() for pid in kids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in kids if Path(f"/proc/{pid}").exists()]
