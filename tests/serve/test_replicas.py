"""Two real `bastion serve` processes sharing one PostgreSQL database and one Redis: what
defines policy holds across them.

Each run gets a fresh PostgreSQL database (``bastion_test_<random>``, dropped at the end)
and its own Redis key prefix, so parallel sessions never meet. Skipped, with the reason,
when PostgreSQL or Redis cannot be reached. The replicas serve the digits model with a
guard whose similarity detector blocks query-based attacks; each has a rate limit of
``BURST`` requests (refilling at ``RATE``/s) per key, shared through Redis."""

from __future__ import annotations

import os
import shutil
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
import torch

from bastion.audit import AuditLog
from bastion.audit.sth import generate_key_file
from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.guard.test_similarity import _square_like
from tests.ports import free_port
from tests.processes import stop, wait_healthy
from tests.services import PG_URL, REDIS_URL, pg_unreachable, redis_unreachable

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.redis]
BURST, RATE = 20, 0.5
CACHE_TTL_S = 0.5


@dataclass
class Deployment:
    bases: list[str]
    procs: list[subprocess.Popen]
    keys: dict[str, str]  # name -> secret
    ids: dict[str, int]
    db_url: str
    key_file: Path
    model_dir: Path
    logs: list[Path]

    def http(self, replica: int, key: str) -> httpx.Client:
        return httpx.Client(
            base_url=self.bases[replica],
            headers={"Authorization": f"Bearer {self.keys[key]}"},
            timeout=30,
        )


def _guarded_model(digits_model_dir: Path, train, out: Path) -> Path:
    """The digits model with a quick guard: Mahalanobis, drift, extraction (δ fixed) and the
    similarity detector (salt fixed)."""
    from bastion.guard.config import GuardConfig
    from bastion.guard.guard import fit_guard
    from bastion.models.io import load_model

    shutil.copytree(digits_model_dir, out)
    off = {"enabled": False}
    config = GuardConfig.model_validate(
        {
            "detectors": {"reconstruction": off, "squeeze": off},
            "extraction": {"delta": 0.5},
            "query": {"similarity": {"salt": 7}, "coverage": off},
        }
    )
    torch.manual_seed(0)
    fit_guard(load_model(out).module, train, config=config).save(out)
    return out


def _start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    out = log.open("wb")
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)


@pytest.fixture(scope="module")
def deployment(digits, digits_model_dir, tmp_path_factory) -> Iterator[Deployment]:
    for reason in (pg_unreachable(), redis_unreachable()):
        if reason:
            pytest.skip(reason)
    import psycopg
    import redis

    tmp = tmp_path_factory.mktemp("replicas")
    model = _guarded_model(digits_model_dir, digits.train, tmp / "model")
    name = f"bastion_test_{uuid.uuid4().hex[:12]}"
    prefix = f"bastion-test-{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    db = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = make_engine(db)
    keys, ids = {}, {}
    for key, role in (
        ("admin", "admin"),
        ("attacker", "client"),
        ("limited", "client"),
        ("blocked", "client"),
        *((f"load{i}", "client") for i in range(4)),
        *((f"kill{i}", "client") for i in range(4)),
    ):
        info, secret = create_key(engine, role, key)
        keys[key], ids[key] = secret, info.id
    engine.dispose()
    key_file = tmp / "audit.key"
    generate_key_file(key_file)
    config = tmp / "serve.yaml"
    config.write_text(
        f"redis_url: {REDIS_URL}\n"
        f"redis_prefix: {prefix}\n"
        f"auth: {{cache_ttl_s: {CACHE_TTL_S}}}\n"
        f"rate_limit: {{requests_per_s: {RATE}, requests_burst: {BURST}}}\n"
        f"audit: {{key_file: {key_file}, checkpoint_every: 50}}\n"
        "blocks: {expire_after_s: 3600}\n"
        "reviews: {check_every_s: 3600}\n"
    )
    env = {**os.environ, "BASTION_LOG": "WARNING", "BASTION_DB": db}
    procs, bases, logs = [], [], []
    try:
        for i in range(2):
            port = free_port()
            cmd = [sys.executable, "-m", "bastion.cli", "serve", "--model", str(model)]
            cmd += ["--db", db, "--config", str(config), "--port", str(port)]
            cmd += ["--log-level", "warning"]
            logs.append(tmp / f"replica{i}.log")
            procs.append(_start(cmd, env, logs[-1]))
            bases.append(f"http://127.0.0.1:{port}")
        for proc, base, log in zip(procs, bases, logs, strict=True):
            wait_healthy(proc, base, log.read_text)
        yield Deployment(bases, procs, keys, ids, db, key_file, model, logs)
    finally:
        for proc in procs:
            stop(proc)
        client = redis.Redis.from_url(REDIS_URL)
        for k in client.scan_iter(f"{prefix}:*"):
            client.delete(k)
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _first_block(verdicts: list[str]) -> int | None:
    return next((i for i, v in enumerate(verdicts) if v == "block"), None)


def test_attacker_alternating_replicas_is_blocked_as_fast_as_against_one(deployment, digits):
    """First in the module: the shared similarity store holds nothing but the attack."""
    from bastion.guard.guard import Guard
    from bastion.models.io import load_model

    queries = _square_like(digits.test.x[-1], 12, eps=0.03, seed=4)
    # one process: the same guard, in this process, fed the whole attack
    reference = Guard.load(deployment.model_dir, load_model(deployment.model_dir))
    alone = [reference.inspect(queries[i : i + 1], "attacker")[0].verdict for i in range(12)]
    want = _first_block(alone)
    assert want is not None and want > 1
    # the deployment: every other query to the other replica
    codes = []
    for i in range(want + 1):
        with deployment.http(i % 2, "attacker") as http:
            r = http.post("/v1/predict", json={"inputs": queries[i : i + 1].tolist()})
        codes.append(r.status_code)
    assert codes[:want] == [200] * want, codes
    assert codes[want] == 403  # blocked at the same query as one process blocks it
    # the block holds on both replicas
    for replica in (0, 1):
        with deployment.http(replica, "attacker") as http:
            r = http.post("/v1/predict", json={"inputs": digits.test.x[:1].tolist()})
        assert r.status_code == 403 and r.json()["code"] == "blocked"


def test_rate_limit_of_a_key_holds_across_replicas(deployment, digits):
    body = {"inputs": digits.test.x[:1].tolist()}
    clients = [deployment.http(0, "limited"), deployment.http(1, "limited")]
    start = time.monotonic()
    codes = [clients[i % 2].post("/v1/predict", json=body).status_code for i in range(3 * BURST)]
    elapsed = time.monotonic() - start
    for c in clients:
        c.close()
    allowed = codes.count(200)
    # one budget for both: a replica each would have let 2 × BURST through
    assert BURST <= allowed <= BURST + RATE * elapsed + 1, (allowed, elapsed)
    assert set(codes) == {200, 429}
    assert 429 in codes[0::2] and 429 in codes[1::2]  # refused by both replicas


def test_block_set_on_one_replica_holds_on_the_other(deployment, digits):
    body = {"inputs": digits.test.x[:1].tolist()}
    cid = deployment.ids["blocked"]
    with deployment.http(1, "blocked") as b:
        assert b.post("/v1/predict", json=body).status_code == 200
    with deployment.http(0, "admin") as admin:
        r = admin.put(f"/v1/clients/{cid}/block", json={"reason": "test: replicas"})
        assert r.status_code == 200, r.text
    time.sleep(CACHE_TTL_S + 0.3)  # the other replica re-reads the blocks within its cache TTL
    with deployment.http(1, "blocked") as b:
        r = b.post("/v1/predict", json=body)
    assert r.status_code == 403 and r.json()["code"] == "blocked"
    with deployment.http(1, "admin") as admin:  # removed on the other: lifted on the first
        assert admin.delete(f"/v1/clients/{cid}/block").status_code == 200
    time.sleep(CACHE_TTL_S + 0.3)
    with deployment.http(0, "blocked") as b:
        assert b.post("/v1/predict", json=body).status_code == 200


def _load(deployment: Deployment, key: str, n: int, x, acked: list[str], lock) -> None:
    clients = [deployment.http(0, key), deployment.http(1, key)]
    try:
        for i in range(n):
            try:
                r = clients[i % 2].post("/v1/predict", json={"inputs": x[i : i + 1].tolist()})
            except httpx.TransportError:
                continue  # a killed replica: not acknowledged
            if r.status_code in (200, 202):  # answered, or held for review: acknowledged
                with lock:
                    acked.append(r.json()["request_id"])
    finally:
        for c in clients:
            c.close()


def _logged_request_ids(url: str) -> set[str]:
    log = AuditLog.open(url, create=False)
    try:
        return {e.get("request_id") for e in log.entries(0, log.size())}
    finally:
        log.close()


def _verify(deployment: Deployment) -> subprocess.CompletedProcess:
    return sign_and_verify(deployment.db_url, deployment.key_file)


def sign_and_verify(db_url: str, key_file: Path) -> subprocess.CompletedProcess:
    """`bastion audit sign` a head over the log (it must succeed), then `audit verify` it."""
    cmd = [sys.executable, "-m", "bastion.cli", "audit"]
    env = {**os.environ, "BASTION_DB": db_url}
    signed = subprocess.run(
        [*cmd, "sign", "--db", db_url, "--key-file", str(key_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert signed.returncode == 0, signed.stdout + signed.stderr
    return subprocess.run(
        [*cmd, "verify", "--db", db_url, "--key", str(key_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_concurrent_load_over_replicas_leaves_one_log_that_verifies(deployment, digits):
    acked: list[str] = []
    lock = threading.Lock()
    x = digits.test.x[:15]
    threads = [
        threading.Thread(target=_load, args=(deployment, f"load{i}", 15, x, acked, lock))
        for i in range(4)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(acked) == 60
    assert set(acked) <= _logged_request_ids(deployment.db_url)
    done = _verify(deployment)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_replica_killed_mid_load_loses_no_acknowledged_entry(deployment, digits):
    """Last in the module: replica 1 is killed (SIGKILL) while four clients load both."""
    acked: list[str] = []
    lock = threading.Lock()
    x = digits.test.x[15:35]
    threads = [
        threading.Thread(target=_load, args=(deployment, f"kill{i}", 20, x, acked, lock))
        for i in range(4)
    ]
    for th in threads:
        th.start()
    time.sleep(0.5)
    deployment.procs[1].kill()
    for th in threads:
        th.join()
    deployment.procs[1].wait()
    assert len(acked) >= 40  # replica 0 kept answering its half
    assert set(acked) <= _logged_request_ids(deployment.db_url)
    done = _verify(deployment)
    assert done.returncode == 0, done.stdout + done.stderr
