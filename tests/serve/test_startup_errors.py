"""`bastion serve` start-up errors: one line on stderr and exit 2, before "serving on" is
printed and before anything listens; never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import uvicorn

from bastion.cli import main
from tests.ports import free_port


@pytest.fixture()
def serve(monkeypatch, capsys, tmp_path):
    """Run `bastion serve ARGS` in this process; it must stop before serving."""

    def never(*_args, **_kwargs):
        raise AssertionError("the server started")

    monkeypatch.setattr(uvicorn.Server, "run", never)
    monkeypatch.chdir(tmp_path)

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["bastion", "serve", *args])
        with pytest.raises(SystemExit) as stop:
            main()
        out = capsys.readouterr()
        return stop.value.code, out.out, out.err

    return run


def _one_line(code: int, out: str, err: str, match: str) -> None:
    assert code == 2, (out, err)
    assert "serving" not in out and "Traceback" not in out + err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    assert match in errors[0], errors[0]


def _yaml(tmp_path: Path, text: str) -> str:
    path = tmp_path / "serve.yaml"
    path.write_text(text)
    return str(path)


def test_missing_model(serve, tmp_path):
    _one_line(*serve("--model", str(tmp_path / "nope")), match="model not found")


def test_no_model_at_all(serve):
    _one_line(*serve(), match="no model to serve")


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("foo://bar", "cannot use database URL"),
        ("not a url", "cannot use database URL"),
        ("sqlite:////proc/no/such/dir/x.db", "cannot create the folder"),
        ("postgresql://u:secret@127.0.0.1:{port}/x", "cannot open database"),
    ],
    ids=["unknown-dialect", "not-a-url", "folder", "postgres-down"],
)
def test_bad_db_url(serve, digits_model_dir, url, match):
    url = url.format(port=free_port())
    code, out, err = serve("--model", str(digits_model_dir), "--db", url)
    _one_line(code, out, err, match)
    assert "secret" not in err  # the password is masked


def test_corrupt_database_file(serve, digits_model_dir, tmp_path):
    db = tmp_path / "corrupt.db"
    db.write_bytes(os.urandom(4096))
    code, out, err = serve("--model", str(digits_model_dir), "--db", f"sqlite:///{db}")
    _one_line(code, out, err, "file is not a database")


@pytest.mark.parametrize(
    ("url", "match"),
    [("redis://127.0.0.1:{port}/0", "cannot reach Redis"), ("notredis://x", "bad --redis-url")],
    ids=["unreachable", "bad-scheme"],
)
def test_bad_redis(serve, digits_model_dir, tmp_path, url, match):
    url = url.format(port=free_port())
    db = f"sqlite:///{tmp_path / 's.db'}"
    _one_line(*serve("--model", str(digits_model_dir), "--db", db, "--redis-url", url), match)


def test_bad_tls_files(serve, digits_model_dir, tmp_path):
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    args = ["--ssl-certfile", str(bad), "--ssl-keyfile", str(bad)]
    _one_line(*serve("--model", str(digits_model_dir), *args), match="TLS certificate")


def test_bad_audit_key_file(serve, digits_model_dir, tmp_path):
    key = tmp_path / "audit.pem"
    key.write_text("garbage")
    key.chmod(0o600)
    config = _yaml(tmp_path, f"audit:\n  key_file: {key}\n")
    code, out, err = serve("--model", str(digits_model_dir), "--config", config)
    _one_line(code, out, err, str(key))


def test_missing_audit_key_file(serve, digits_model_dir, tmp_path):
    config = _yaml(tmp_path, f"audit:\n  key_file: {tmp_path / 'missing.pem'}\n")
    code, out, err = serve("--model", str(digits_model_dir), "--config", config)
    _one_line(code, out, err, "missing.pem")


def test_bad_audit_key_in_env(serve, digits_model_dir, monkeypatch):
    monkeypatch.setenv("BASTION_AUDIT_KEY", "not a key")
    _one_line(*serve("--model", str(digits_model_dir)), match="BASTION_AUDIT_KEY")


def test_port_in_use(serve, digits_model_dir):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = str(busy.getsockname()[1])
        _one_line(*serve("--model", str(digits_model_dir), "--port", port), match="cannot listen")


def test_unresolvable_host(serve, digits_model_dir):
    args = ["--model", str(digits_model_dir), "--host", "no-such-host.invalid"]
    _one_line(*serve(*args), match="cannot resolve --host")


def test_failing_entry_point(serve, digits_model_dir):
    args = ["--model", str(digits_model_dir), "--entry-point", "os:getpid"]
    _one_line(*serve(*args), match="entry point")


def test_broken_guard(serve, digits_model_dir, tmp_path):
    guard = tmp_path / "guard"
    guard.mkdir()
    (guard / "guard.json").write_text("")
    args = ["--model", str(digits_model_dir), "--guard-dir", str(guard)]
    _one_line(*serve(*args), match="--allow-unguarded")


def test_a_real_process_stops_with_one_line(digits_model_dir, tmp_path):
    """The same through a real process: exit 2, one error line, nothing served."""
    cmd = [sys.executable, "-m", "bastion.cli", "serve", "--model", str(digits_model_dir)]
    cmd += ["--db", "foo://bar", "--port", str(free_port())]
    env = {**os.environ, "BASTION_DB": f"sqlite:///{tmp_path / 'b.db'}"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    _one_line(done.returncode, done.stdout, done.stderr, "cannot use database URL")
