"""Crash tests with real processes: `bastion assess` and `bastion harden` killed with SIGKILL
mid-run resume from their checkpoints on the rerun, redo no finished work and end with a
complete result. (The audit log's SIGKILL test is tests/audit/test_durability.py.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

BASTION = [sys.executable, "-m", "bastion.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*BASTION, *args], cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600
    )


def kill_when(args: list[str], cwd: Path, ready, timeout: float = 300) -> int:
    """Start ``bastion ARGS`` and SIGKILL it as soon as ``ready()`` holds; its return code."""
    proc = subprocess.Popen(
        [*BASTION, *args],
        cwd=cwd,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if ready():
                os.kill(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.05)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash")
    done = run(["train", "--model", "mlp", "--epochs", "2", "--out", "m"], root)
    assert done.returncode == 0, done.stderr
    return root / "m"


def _findings(partial: Path) -> list[dict]:
    if not partial.exists():
        return []
    out = []
    for line in partial.read_text().splitlines()[1:]:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            break
        if rec.get("kind") == "finding":
            out.append(rec["data"])
    return out


def _key(f: dict) -> str:
    from bastion.assess.schema import Finding

    return Finding.model_validate(f).key


def test_assess_killed_mid_run_resumes_without_redoing_findings(model_dir, tmp_path):
    out = tmp_path / "A"
    args = ["assess", "--model", str(model_dir), "--data", "digits", "--eps", "0.1"]
    args += ["--attack", "fgsm", "--attack", "pgd", "--n-eval", "40", "--out", str(out)]
    partial = out / ".partial.jsonl"
    rc = kill_when(args, tmp_path, lambda: len(_findings(partial)) >= 1)
    assert rc == -signal.SIGKILL, "the run finished before the kill: nothing was tested"
    assert not (out / "report.json").exists()
    before = _findings(partial)
    assert before

    done = run(args, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "resumed:" in done.stdout
    report = json.loads((out / "report.json").read_text())
    keys = [_key(f) for f in report["findings"]]
    assert len(keys) == len(set(keys)) and len(keys) > len(before)
    assert report["resumed"] == len(before)
    by_key = {_key(f): f for f in report["findings"]}
    for f in before:  # kept as checkpointed, not recomputed
        assert by_key[_key(f)]["metrics"] == f["metrics"]
        assert by_key[_key(f)]["seconds"] == f["seconds"]
    assert not partial.exists()


def test_harden_killed_mid_training_resumes_from_its_checkpoint(model_dir, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("- fast_at: {epochs: 6, init: parent}\n")
    out = tmp_path / "H"
    args = ["harden", "--model", str(model_dir), "--data", "digits", "--recipe", str(recipe)]
    args += ["--out", str(out), "--no-assess", "--allow-accuracy-drop", "1"]

    def checkpointed() -> bool:
        return any((out / ".harden").glob("*/*.ckpt")) if (out / ".harden").exists() else False

    rc = kill_when(args, tmp_path, checkpointed)
    assert rc == -signal.SIGKILL, "the run finished before the kill: nothing was tested"
    assert not (out / "comparison" / "comparison.json").exists()

    done = run(args, tmp_path)
    assert done.returncode == 0, done.stderr
    comp = json.loads((out / "comparison" / "comparison.json").read_text())
    assert comp["training"]["resumed_from"] >= 1
    assert comp["training"]["epochs_run"] == 6
