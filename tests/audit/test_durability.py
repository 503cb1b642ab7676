"""A writer killed with SIGKILL loses no acknowledged entry, and the log still verifies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.audit import AuditLog
from tests.services import PG_URL

WRITER = Path(__file__).with_name("_kill_writer.py")
ROOT = Path(__file__).resolve().parents[2]


def run_and_kill(
    url: str, schema: str, mode: str, acks_wanted: int = 300
) -> tuple[dict[int, int], Ed25519PublicKey]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, str(WRITER), url, schema, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    acked: dict[int, int] = {}
    deadline = time.monotonic() + 40
    try:
        assert proc.stdout is not None
        ready, pub_hex = proc.stdout.readline().split()
        assert ready == "ready"
        pub = Ed25519PublicKey.from_public_bytes(bytes.fromhex(pub_hex))
        while len(acked) < acks_wanted and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            _, k, index = line.split()
            acked[int(k)] = int(index)
        os.kill(proc.pid, signal.SIGKILL)  # mid-flight: more appends are in progress
        # acknowledgements already written before the kill count too
        rest = proc.stdout.read()
        for line in rest.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[0] == "ack":
                acked[int(parts[1])] = int(parts[2])
    finally:
        proc.kill()
        proc.wait(10)
    assert proc.returncode == -signal.SIGKILL
    assert len(acked) >= min(acks_wanted, 50), f"the writer acknowledged only {len(acked)}"
    return acked, pub


def check_survivors(
    url: str, schema: str | None, acked: dict[int, int], pub: Ed25519PublicKey
) -> None:
    with AuditLog.open(url, schema=schema) as log:
        size = log.size()
        assert max(acked.values()) < size
        entries = log.entries(0, size)
        for k, index in acked.items():
            assert entries[index] == {"w": k}, f"acknowledged entry {index} lost or changed"
        result = log.verify(pub)  # the writer's key, as it said it on its stdout
        assert result.ok, result.message
        assert result.size == size and result.heads_checked >= 1


@pytest.mark.parametrize("mode", ["direct", "group"])
def test_sigkill_sqlite(tmp_path, mode):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    acked, pub = run_and_kill(url, "", mode)
    check_survivors(url, None, acked, pub)


@pytest.mark.postgres
def test_sigkill_postgres(pg_schema):
    acked, pub = run_and_kill(PG_URL, pg_schema, "group")
    check_survivors(PG_URL, pg_schema, acked, pub)
