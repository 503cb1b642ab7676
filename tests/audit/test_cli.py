"""`bastion audit ...`: exit 0 with a one-line OK, 1 naming the first bad entry, 2 for a
user mistake (no trusted key, no log)."""

from __future__ import annotations

import json
import sys

import pytest
from typer.testing import CliRunner

from bastion.audit import AuditLog, public_pem, resolve_signing_key
from bastion.cli import build_app, main
from tests.audit.conftest import entry
from tests.audit.test_tamper import Intruder


@pytest.fixture()
def env(tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("BASTION_DB", url)
    key_file = tmp_path / "audit.pem"
    key = resolve_signing_key(key_file, create=True)
    pub = tmp_path / "pub.pem"
    pub.write_text(public_pem(key))
    with AuditLog.open(url, signing_key=key, checkpoint_every=10) as log:
        for b in range(3):
            log.append_many([entry(i) for i in range(10 * b, 10 * b + 10)])
    return url, key_file, pub


def invoke(*args):
    return CliRunner().invoke(build_app(), list(args))


def test_verify_ok_is_one_line_exit_0(env, monkeypatch):
    url, _, pub = env
    r = invoke("audit", "verify", "--key", str(pub))
    assert r.exit_code == 0, r.output
    assert r.output.startswith("OK: 30 entries") and "3 signed tree head(s) verified" in r.output
    assert len(r.output.strip().splitlines()) == 1  # one line, never wrapped
    monkeypatch.setenv("BASTION_AUDIT_PUBKEY", str(pub))  # the key configured for the deployment
    r = invoke("audit", "verify", "--db", url)
    assert r.exit_code == 0 and r.output.startswith("OK: 30 entries"), r.output
    assert len(r.output.strip().splitlines()) == 1


def test_verify_names_the_first_bad_entry_exit_1(env):
    url, _, pub = env
    with AuditLog.open(url) as log:
        x = Intruder(log)
        blob = x.q("SELECT entries FROM audit_log_blocks WHERE start = 10")[0][0]
        x.q(
            "UPDATE audit_log_blocks SET entries = ? WHERE start = 10",
            blob.replace(b'"seq":14', b'"seq":99'),
        )
        x.close()
    r = invoke("audit", "verify", "--key", str(pub))
    assert r.exit_code == 1
    assert "FAILED" in r.output and "entry 14 was altered" in r.output


def test_verify_truncated_exit_1(env):
    url, _, pub = env
    with AuditLog.open(url) as log:
        x = Intruder(log)
        x.q("DELETE FROM audit_log_blocks WHERE start = 20")
        x.close()
    r = invoke("audit", "verify", "--key", str(pub))
    assert r.exit_code == 1 and "first missing entry 20" in r.output


def test_sign_then_verify_against_the_kept_head(env, tmp_path):
    _, key_file, pub = env
    out = tmp_path / "head.json"
    r = invoke("audit", "sign", "--key-file", str(key_file), "--out", str(out))
    assert r.exit_code == 0, r.output
    head = json.loads(out.read_text())
    assert head["tree_size"] == 30 and "signature" in head
    assert key_file.read_text() not in r.output  # the private key is never printed
    r = invoke("audit", "verify", "--key", str(pub), "--head", str(out))
    assert r.exit_code == 0 and "5 signed tree head(s)" in r.output  # 3 + 1 stored, 1 kept


def test_prove_and_consistency(env):
    r = invoke("audit", "prove", "--index", "7")
    assert r.exit_code == 0, r.output
    proof = json.loads(r.output)
    assert proof["verified"] is True and proof["tree_size"] == 30 and len(proof["audit_path"]) == 5
    r = invoke("audit", "prove", "--index", "3", "--size", "4")
    assert json.loads(r.output)["tree_size"] == 4
    r = invoke("audit", "consistency", "--old", "10", "--new", "30")
    assert r.exit_code == 0 and json.loads(r.output)["verified"] is True


def test_show_tail(env):
    r = invoke("audit", "show", "--tail", "2")
    assert r.exit_code == 0
    lines = r.output.strip().splitlines()
    assert lines[0].startswith('28  {"event":"predict"') and lines[1].startswith("29  ")
    assert "30 entries; latest signed head: size 30" in lines[-1]


def test_keygen_and_pubkey(tmp_path):
    path = tmp_path / "k.pem"
    r = invoke("audit", "keygen", "--key-file", str(path))
    assert r.exit_code == 0 and "BEGIN PUBLIC KEY" in r.output and "PRIVATE" not in r.output
    assert (path.stat().st_mode & 0o777) == 0o600
    r = invoke("audit", "pubkey", "--key-file", str(path))
    assert r.exit_code == 0 and "BEGIN PUBLIC KEY" in r.output


def run_main(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["bastion", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    return exc.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["audit", "prove", "--index", "99"], "entry index 99 is outside a tree of 30"),
        (["audit", "consistency", "--old", "31"], "old size 31 must lie between 0 and"),
        (["audit", "verify", "--key", "nonsense"], "expected an Ed25519 public key"),
        (["audit", "sign"], "no audit signing key"),
        (["audit", "verify", "--db", "mysql://x"], "unsupported audit log URL"),
        (["audit", "verify", "--head", "/nope.json"], "cannot read tree head file /nope.json"),
    ],
)
def test_user_errors_exit_2(env, monkeypatch, capsys, args, match):
    monkeypatch.delenv("BASTION_AUDIT_KEY", raising=False)
    monkeypatch.setenv("BASTION_AUDIT_PUBKEY", str(env[2]))  # verify gets past the key check
    code, err = run_main(monkeypatch, capsys, *args)
    assert code == 2 and match in err.replace("\n", " ")
    assert "Traceback" not in err


def test_key_file_open_to_others_exit_2(env, monkeypatch, capsys):
    _, key_file, _ = env
    key_file.chmod(0o640)
    code, err = run_main(monkeypatch, capsys, "audit", "sign", "--key-file", str(key_file))
    assert code == 2 and "chmod 600" in err
