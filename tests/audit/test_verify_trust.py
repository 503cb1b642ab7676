"""`bastion audit verify` trusts only a key its caller gives: without one it refuses (exit 2,
one line); an integrity-only check says that no signature was checked; a database that
does not exist is an error and nothing is created."""

from __future__ import annotations

import sqlite3
import time

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from bastion.audit import AuditLog, public_pem, resolve_signing_key
from bastion.audit.sth import key_id, public_bytes, sign_head
from bastion.cli import build_app
from bastion.errors import ConfigError, StoreError
from tests.audit.conftest import entry
from tests.audit.test_tamper import Intruder
from tests.cli_runner import run_main


@pytest.fixture()
def env(tmp_path, monkeypatch):
    """A 30-entry log signed every 10 entries; $BASTION_DB points at it, no key configured."""
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    monkeypatch.setenv("BASTION_DB", url)
    for var in ("BASTION_AUDIT_KEY", "BASTION_AUDIT_PUBKEY"):
        monkeypatch.delenv(var, raising=False)
    key = resolve_signing_key(tmp_path / "audit.pem", create=True)
    pub = tmp_path / "pub.pem"
    pub.write_text(public_pem(key))
    with AuditLog.open(url, signing_key=key, checkpoint_every=10) as log:
        for b in range(3):
            log.append_many([entry(i) for i in range(10 * b, 10 * b + 10)])
    return url, key, pub


def invoke(*args):
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def one_line(text: str) -> bool:
    return len(text.strip().splitlines()) == 1 and "Traceback" not in text


def resign_with_a_rogue_key(url: str) -> None:
    """What an intruder with write access does: edit an entry, recompute every recorded hash
    and chain, and re-sign every head (and its recorded public key) with a key of their own."""
    rogue = Ed25519PrivateKey.generate()
    with AuditLog.open(url) as log:
        x = Intruder(log)
        _, _, _, entries = x.block(10)
        entries[4] = entries[4].replace(b'"allow"', b'"block"')
        x.set_entries(10, entries)
        x.rehash_from(10)
        for hid, size in x.q("SELECT id, tree_size FROM audit_log_heads"):
            forged = sign_head(rogue, size, log.root(size), int(time.time() * 1000))
            x.q(
                "UPDATE audit_log_heads SET timestamp_ms = ?, root = ?, signature = ?, "
                "key_id = ?, public_key = ? WHERE id = ?",
                forged.timestamp_ms,
                forged.root,
                forged.signature,
                key_id(rogue),
                public_bytes(rogue),
                hid,
            )
        x.close()


def test_verify_without_a_trusted_key_is_refused(env, monkeypatch, capsys):
    code, out, err = run_main(monkeypatch, capsys, "audit", "verify")
    assert code == 2 and one_line(err) and "OK" not in out + err
    assert "no trusted public key: pass --key PUB" in err and "$BASTION_AUDIT_PUBKEY" in err
    assert "stored in the log cannot vouch for the log" in err and "re-sign it" in err


def test_the_library_refuses_too(env):
    url, key, _ = env
    with AuditLog.open(url) as log, pytest.raises(ConfigError, match="cannot vouch for the log"):
        log.verify()
    with AuditLog.open(url, signing_key=key) as log:  # its own configured key is trusted
        assert log.verify().ok


def test_a_resigned_log_passes_only_the_integrity_check(env, monkeypatch, capsys):
    url, _, pub = env
    resign_with_a_rogue_key(url)
    code, _, err = run_main(monkeypatch, capsys, "audit", "verify")
    assert code == 2 and "cannot vouch" in err  # the log's own (rogue) key is never used
    r = invoke("audit", "verify", "--key", pub)
    assert r.exit_code == 1
    assert "FAILED: signed tree head #1 (size 10) has an invalid signature for the trusted key" in (
        r.output
    )
    assert "its row names another key" in r.output
    r = invoke("audit", "verify", "--no-signatures")  # the intruder's rewrite is consistent …
    assert r.exit_code == 0 and one_line(r.output)
    assert r.output.startswith("INTEGRITY ONLY, signatures NOT checked: 30 entries")  # … no OK
    assert "OK" not in r.output and "does not show that the log is authentic" in r.output


def test_integrity_only_still_catches_a_careless_edit(env):
    url, _, _ = env
    with AuditLog.open(url) as log:
        x = Intruder(log)
        _, _, _, entries = x.block(20)
        entries[1] = entries[1].replace(b'"allow"', b'"block"')
        x.set_entries(20, entries)
        x.close()
    r = invoke("audit", "verify", "--no-signatures")
    assert r.exit_code == 1 and "FAILED: entry 21 was altered" in r.output
    assert "signature not checked" in r.output  # the head it was compared with is unsigned


def test_the_deployment_key_and_its_errors(env, monkeypatch, capsys):
    url, key, pub = env
    monkeypatch.setenv("BASTION_AUDIT_PUBKEY", key.public_key().public_bytes_raw().hex())
    r = invoke("audit", "verify", "--db", url)
    assert r.exit_code == 0 and r.output.startswith("OK: 30 entries"), r.output
    assert f"verified with key {key_id(key)}" in r.output
    monkeypatch.setenv("BASTION_AUDIT_PUBKEY", "not a key")
    code, _, err = run_main(monkeypatch, capsys, "audit", "verify")
    assert code == 2 and one_line(err)
    assert "$BASTION_AUDIT_PUBKEY: public key: expected an Ed25519 public key" in err
    monkeypatch.setenv("BASTION_AUDIT_PUBKEY", str(pub.with_name("gone.pem")))
    code, _, err = run_main(monkeypatch, capsys, "audit", "verify")
    assert code == 2 and "public key file" in err and "gone.pem does not exist" in err


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        (["--no-signatures", "--key", "PUB"], "--no-signatures checks no signature"),
        (["--no-signatures", "--head", "h.json"], "--head, --witness-key and --cosignature"),
        (["--no-signatures", "--witness-key", "PUB"], "needs the log's public key"),
        (["--key", "PUB", "--cosignature", "s.json"], "--cosignature needs --witness-key"),
    ],
)
def test_contradictory_options_exit_2(env, monkeypatch, capsys, extra, match):
    _, _, pub = env
    args = [str(pub) if a == "PUB" else a for a in extra]
    code, _, err = run_main(monkeypatch, capsys, "audit", "verify", *args)
    assert code == 2 and one_line(err) and match in err


def test_a_log_with_no_signed_head_is_not_ok_with_a_key(tmp_path):
    url = f"sqlite:///{tmp_path / 'unsigned.db'}"
    key = Ed25519PrivateKey.generate()
    with AuditLog.open(url) as log:  # a gateway run without an audit key
        log.append_many([entry(i) for i in range(5)])
    r = invoke("audit", "verify", "--db", url, "--key", key.public_key().public_bytes_raw().hex())
    assert r.exit_code == 1
    assert "FAILED: no signed tree head vouches for the log's 5 entries (the log holds none)" in (
        r.output
    )
    r = invoke("audit", "verify", "--db", url, "--no-signatures")
    assert r.exit_code == 0 and r.output.startswith("INTEGRITY ONLY, signatures NOT checked: 5")


def test_entries_after_the_last_signed_head_are_said_to_be_unsigned(env):
    url, _, pub = env
    with AuditLog.open(url) as log:
        log.append_many([entry(i) for i in range(30, 34)])  # no key here: nothing signed
    r = invoke("audit", "verify", "--key", pub)
    assert r.exit_code == 0 and r.output.startswith("OK: 34 entries")
    assert "entries 30..33 come after the last signed head (size 30)" in r.output


@pytest.mark.parametrize("form", ["url", "plain path", "relative path"])
@pytest.mark.parametrize("command", ["verify", "prove", "consistency", "show"])
def test_a_missing_database_is_an_error_and_nothing_is_created(
    tmp_path, monkeypatch, capsys, form, command
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BASTION_AUDIT_PUBKEY", public_pem(Ed25519PrivateKey.generate()))
    target = tmp_path / "nowhere" / "audit.db"
    db = {
        "url": f"sqlite:///{target}",
        "plain path": str(target),
        "relative path": "nowhere/audit.db",
    }[form]
    args = {"prove": ["--index", "0"], "consistency": ["--old", "0"]}.get(command, [])
    code, out, err = run_main(monkeypatch, capsys, "audit", command, "--db", db, *args)
    assert code == 2 and one_line(err) and "OK" not in out
    assert "no database at" in err and "nothing was created" in err
    assert not target.exists() and not target.parent.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_plain_path_to_an_existing_log_works(env):
    url, _, pub = env
    path = url.removeprefix("sqlite:///")
    r = invoke("audit", "verify", "--db", path, "--key", pub)
    assert r.exit_code == 0 and r.output.startswith("OK: 30 entries")


def test_a_database_without_an_audit_log_is_an_error(tmp_path, monkeypatch, capsys):
    other = tmp_path / "store.db"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE something (x)")
    before = other.read_bytes()
    code, _, err = run_main(
        monkeypatch, capsys, "audit", "verify", "--db", other, "--no-signatures"
    )
    assert code == 2 and one_line(err)
    assert f"{other} holds no audit log (no audit_log_blocks table)" in err
    assert other.read_bytes() == before  # nothing added to it
    with pytest.raises(StoreError, match="holds no audit log"):
        AuditLog.open(str(other), create=False)


@pytest.mark.postgres
def test_a_missing_postgres_log_is_an_error_and_no_schema_is_created(pg_skip_reason):
    if pg_skip_reason:
        pytest.skip(pg_skip_reason)
    import psycopg

    from tests.services import PG_URL

    schema = f"bastion_audit_absent_{int(time.time() * 1e6)}"
    with pytest.raises(StoreError, match=r"no audit log in .* \(schema bastion_audit_absent_"):
        AuditLog.open(PG_URL, schema=schema, create=False)
    with psycopg.connect(PG_URL) as conn:
        found = conn.execute(
            "SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,)
        ).fetchone()
    assert found is None
