"""AuditLog behaviour on SQLite and PostgreSQL: appends, reads, proofs through the log,
signed tree heads, several writers, canonical JSON, keys."""

from __future__ import annotations

import json
import os
import threading

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.audit import (
    AuditLog,
    SignedTreeHead,
    canonical_json,
    leaf_hash,
    load_public_key,
    public_pem,
    resolve_signing_key,
    verify_consistency,
    verify_inclusion,
)
from bastion.audit.backends import MAX_BLOCK
from bastion.errors import ConfigError, StoreError
from tests.audit.conftest import entry


def test_append_read_and_prove(open_log, key):
    log = open_log(signing_key=key, checkpoint_every=0)
    assert log.size() == 0
    assert log.append(entry(0)) == 0
    assert log.append_many([entry(i) for i in range(1, 40)]) == list(range(1, 40))
    assert log.append_many([]) == []
    assert log.size() == 40
    assert log.entry(7) == entry(7)
    assert log.entries(38, 45) == [entry(38), entry(39)]
    assert log.entry_bytes(3) == canonical_json(entry(3))
    root = log.root()
    for i in (0, 17, 39):
        proof = log.inclusion_proof(i)
        assert verify_inclusion(leaf_hash(log.entry_bytes(i)), i, 40, proof, root)
        assert not verify_inclusion(leaf_hash(canonical_json(entry(i + 1))), i, 40, proof, root)
    old_root = log.root(13)
    assert verify_consistency(13, 40, old_root, root, log.consistency_proof(13, 40))
    unsigned = log.verify(key.public_key())  # nothing signed yet: nothing vouches for it
    assert not unsigned.ok and unsigned.first_bad_index is None
    assert "no signed tree head vouches for the log's 40 entries" in unsigned.message
    log.sign_tree_head()
    signed = log.verify(key.public_key())
    assert signed.ok and signed.trusted_size == 40 and signed.message.startswith("OK: 40 entries")


def test_reopen_keeps_everything(open_log, key):
    log = open_log(signing_key=key)
    log.append_many([entry(i) for i in range(25)])
    root, head = log.root(), log.sign_tree_head()
    log.close()
    again = open_log()
    assert again.size() == 25 and again.root() == root
    assert again.heads()[-1] == head
    assert again.latest_head().root == root
    result = again.verify(key.public_key())
    assert result.ok and result.heads_checked == 1 and result.size == 25
    assert result.message.startswith("OK: 25 entries")


def test_checkpoints_are_signed_every_n_entries(open_log, key):
    log = open_log(signing_key=key, checkpoint_every=10)
    for i in range(25):
        log.append(entry(i))
    assert [h.tree_size for h in log.heads()] == [10, 20]
    log.append_many([entry(i) for i in range(25, 47)])  # crosses 30 and 40: one head at 47
    sizes = [h.tree_size for h in log.heads()]
    assert sizes == [10, 20, 47]
    for h in log.heads():
        assert h.verify(key.public_key()) and h.root == log.root(h.tree_size)
    assert log.verify(key.public_key()).heads_checked == 3


def test_checkpoint_every_commit(sqlite_url, key):
    with AuditLog.open(sqlite_url, signing_key=key, checkpoint_every=1) as log:
        log.append({"a": 1})
        log.append_many([{"b": i} for i in range(3)])
        log.append({"c": 1})
        assert [h.tree_size for h in log.heads()] == [1, 4, 5]
        assert log.verify(key.public_key()).heads_checked == 3


def test_large_batch_spans_several_blocks(open_log):
    log = open_log()
    n = MAX_BLOCK * 2 + 5
    idx = log.append_many([{"i": i} for i in range(n)])
    assert idx[-1] == n - 1 and log.size() == n
    assert log.entries(MAX_BLOCK - 1, MAX_BLOCK + 1) == [{"i": MAX_BLOCK - 1}, {"i": MAX_BLOCK}]
    result = log.verify(integrity_only=True)
    assert result.ok and result.size == n and not result.signatures_checked
    assert result.message.startswith("INTEGRITY ONLY, signatures NOT checked")


def test_two_writers_share_one_log(open_log, key):
    a, b = open_log(signing_key=key, checkpoint_every=7), open_log()
    got: list[int] = []

    def write(log, tag):
        for i in range(30):
            got.extend(log.append_many([{"w": tag, "i": i}, {"w": tag, "i": i, "j": 1}]))

    threads = [threading.Thread(target=write, args=(x, t)) for x, t in ((a, "a"), (b, "b"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got) == list(range(120))
    # each writer's cached tree follows the other's appends
    assert a.root() == b.root() and a.size() == b.size() == 120
    assert a.inclusion_proof(5) == b.inclusion_proof(5)
    assert b.verify(key.public_key()).ok


def test_canonical_json_and_bad_entries(sqlite_url):
    assert canonical_json({"b": 1, "a": [1.5, "é", None]}) == '{"a":[1.5,"é",null],"b":1}'.encode()
    with AuditLog.open(sqlite_url) as log:
        with pytest.raises(ConfigError, match="not canonical JSON"):
            log.append({"x": float("nan")})
        with pytest.raises(ConfigError, match="not canonical JSON"):
            log.append({"x": object()})
        with pytest.raises(ConfigError, match="must be a JSON object"):
            log.append([1, 2])  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="raw newline"):
            log.append_encoded([b'{"a":1}\n{"b":2}'])
        assert log.size() == 0


def test_out_of_range_requests(sqlite_url):
    with AuditLog.open(sqlite_url) as log:
        log.append_many([{"i": i} for i in range(3)])
        with pytest.raises(ConfigError, match="outside a tree of 3"):
            log.inclusion_proof(3)
        with pytest.raises(ConfigError, match=r"outside the log's 0\.\.3"):
            log.root(4)
        with pytest.raises(ConfigError, match="between 0 and the new size 2"):
            log.consistency_proof(3, 2)
        with pytest.raises(ConfigError, match="no audit entry 9"):
            log.entry(9)
        with pytest.raises(ConfigError, match="no audit signing key"):
            log.sign_tree_head()
    with pytest.raises(StoreError, match="closed"):
        log.size()


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("mysql://x", "unsupported audit log URL"),
        ("sqlite://", "must be durable"),
        ("sqlite:/x.db", "bad SQLite URL"),
    ],
)
def test_bad_urls(url, match):
    with pytest.raises(StoreError, match=match):
        AuditLog.open(url)


def test_default_url_is_the_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BASTION_DB", f"sqlite:///{tmp_path / 'store.db'}")
    with AuditLog.open() as log:
        log.append({"x": 1})
    assert (tmp_path / "store.db").exists()


def test_signed_head_json_round_trip(sqlite_url, key):
    with AuditLog.open(sqlite_url, signing_key=key) as log:
        log.append({"x": 1})
        head = log.sign_tree_head()
    back = SignedTreeHead.from_json(head.to_json())
    assert back.verify(key.public_key())
    assert back.tree_size == head.tree_size and back.root == head.root
    forged = SignedTreeHead.from_dict({**head.to_dict(), "tree_size": 2})
    assert not forged.verify(key.public_key())
    with pytest.raises(ConfigError, match="not a signed tree head"):
        SignedTreeHead.from_json('{"tree_size": 1}')
    with pytest.raises(ConfigError, match="not JSON"):
        SignedTreeHead.from_json("{")


# ---------------------------------------------------------------- keys


def test_key_file_created_0600_and_reloaded(tmp_path):
    path = tmp_path / "keys" / "audit.pem"
    key = resolve_signing_key(path, create=True)
    assert (path.stat().st_mode & 0o777) == 0o600
    again = resolve_signing_key(path)
    assert public_pem(again) == public_pem(key)
    assert load_public_key(path).public_bytes_raw() == key.public_key().public_bytes_raw()


def test_key_file_readable_by_others_is_refused(tmp_path):
    path = tmp_path / "audit.pem"
    resolve_signing_key(path, create=True)
    os.chmod(path, 0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        resolve_signing_key(path)


def test_missing_key_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_signing_key(tmp_path / "nope.pem")


def test_key_from_environment(monkeypatch):
    key = Ed25519PrivateKey.generate()
    monkeypatch.setenv("BASTION_AUDIT_KEY", key.private_bytes_raw().hex())
    assert resolve_signing_key().public_key().public_bytes_raw() == (
        key.public_key().public_bytes_raw()
    )
    monkeypatch.setenv("BASTION_AUDIT_KEY", "not a key")
    with pytest.raises(ConfigError, match=r"\$BASTION_AUDIT_KEY: expected an Ed25519 private key"):
        resolve_signing_key()
    monkeypatch.delenv("BASTION_AUDIT_KEY")
    assert resolve_signing_key() is None


def test_public_key_forms(key, tmp_path):
    raw = key.public_key().public_bytes_raw()
    pem_file = tmp_path / "pub.pem"
    pem_file.write_text(public_pem(key))
    for form in (raw, raw.hex(), pem_file, str(pem_file), public_pem(key)):
        assert load_public_key(form).public_bytes_raw() == raw
    priv = tmp_path / "priv.pem"
    again = resolve_signing_key(priv, create=True)
    assert load_public_key(priv).public_bytes_raw() == again.public_key().public_bytes_raw()
    with pytest.raises(ConfigError, match="expected an Ed25519 public key"):
        load_public_key("zzz")


def test_private_key_is_never_printed(sqlite_url, key, tmp_path, caplog):
    caplog.set_level("DEBUG")
    with AuditLog.open(sqlite_url, signing_key=key) as log:
        log.append({"x": 1})
        head = log.sign_tree_head()
    secret = key.private_bytes_raw()
    text = caplog.text + head.to_json() + repr(head) + json.dumps(head.to_dict())
    assert secret.hex() not in text


@pytest.mark.postgres
def test_postgres_connection_dropped_by_the_server_is_reopened(pg_schema, key):
    import psycopg

    from tests.services import PG_URL

    with AuditLog.open(PG_URL, schema=pg_schema, signing_key=key) as log:
        log.append({"before": 1})
        pid = log.backend.conn.info.backend_pid  # type: ignore[attr-defined]
        with psycopg.connect(PG_URL, autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        assert log.append({"after": 1}) == 1  # reconnected before writing anything
        log.sign_tree_head()
        assert log.size() == 2 and log.verify(key.public_key()).ok


@pytest.mark.postgres
def test_postgres_verify_reads_one_snapshot(pg_schema):
    from tests.services import PG_URL

    with AuditLog.open(PG_URL, schema=pg_schema) as log:
        log.append_many([{"i": i} for i in range(5)])
        snap = log.backend.snapshot()
        try:
            assert snap.tail_size() == 5
            log.append({"i": 5})  # committed after the snapshot began
            assert snap.tail_size() == 5
        finally:
            snap.close()
        assert log.size() == 6
