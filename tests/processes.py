"""Real `bastion serve` processes in tests: wait until one answers /healthz, stop it."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest


def wait_healthy(
    proc: subprocess.Popen, base: str, output: Callable[[], str], *, timeout_s: float = 90
) -> dict[str, Any]:
    """The server's /healthz answer once it gives one; the test fails with the tail of
    ``output()`` when the process exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"server exited: {output()[-3000:]}")
        try:
            r = httpx.get(f"{base}/healthz", timeout=5)
            if r.status_code == 200:
                return r.json()
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"server did not start within {timeout_s:.0f} s: {output()[-3000:]}")
        time.sleep(0.2)


def stop(proc: subprocess.Popen, *, timeout_s: float = 30) -> None:
    """Ctrl-C (a graceful shutdown), then kill if it does not end within ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
