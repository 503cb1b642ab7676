"""`verify` catches each kind of tampering and names the first bad entry, on SQLite and
PostgreSQL: the database is edited behind the log's back, as an intruder would."""

from __future__ import annotations

import hashlib
import struct
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bastion.audit import AuditLog, SignedTreeHead
from bastion.audit.backends import GENESIS, SEP
from bastion.errors import ConfigError
from tests.audit.conftest import entry


class Intruder:
    """Direct SQL access to the log's tables (a second connection)."""

    def __init__(self, log: AuditLog) -> None:
        b = log.backend
        if b.dialect == "sqlite":
            import sqlite3

            self.conn: Any = sqlite3.connect(b.path, isolation_level=None)
            self.ph = "?"
        else:
            import psycopg

            self.conn = psycopg.connect(b.conninfo, autocommit=True)
            self.conn.execute(f'SET search_path TO "{b.schema}"')
            self.ph = "%s"

    def q(self, sql: str, *params: Any) -> list:
        cur = self.conn.execute(sql.replace("?", self.ph), params)
        return cur.fetchall() if cur.description else []

    def block(self, start: int) -> tuple[int, bytes, bytes, list[bytes]]:
        n, chain, hashes, blob = self.q(
            "SELECT n_entries, chain, hashes, entries FROM audit_log_blocks WHERE start = ?", start
        )[0]
        return n, bytes(chain), bytes(hashes), bytes(blob).split(SEP)

    def set_entries(self, start: int, entries: list[bytes]) -> None:
        self.q("UPDATE audit_log_blocks SET entries = ? WHERE start = ?", SEP.join(entries), start)

    def rehash_from(self, start: int) -> None:
        """Recompute leaf hashes and chains of every block from ``start`` (a careful intruder)."""
        prev = GENESIS
        for s, n, hashes, blob in self.q(
            "SELECT start, n_entries, hashes, entries FROM audit_log_blocks ORDER BY start"
        ):
            if s >= start:
                entries = bytes(blob).split(SEP)
                hashes = b"".join(hashlib.sha256(b"\x00" + e).digest() for e in entries)
                n = len(entries)
                self.q(
                    "UPDATE audit_log_blocks SET n_entries = ?, hashes = ? WHERE start = ?",
                    n,
                    hashes,
                    s,
                )
            prev = hashlib.sha256(
                b"\x02" + struct.pack(">QQ", s, n) + bytes(hashes) + prev
            ).digest()
            self.q("UPDATE audit_log_blocks SET chain = ? WHERE start = ?", prev, s)

    def close(self) -> None:
        self.conn.close()


@pytest.fixture()
def setup(open_log, key):
    """60 entries in blocks of 10, signed heads at 20, 40 and 60."""
    log = open_log(signing_key=key, checkpoint_every=20)
    for b in range(6):
        log.append_many([entry(i) for i in range(10 * b, 10 * b + 10)])
    assert [h.tree_size for h in log.heads()] == [20, 40, 60]
    result = log.verify(key.public_key())
    assert result.ok and result.heads_checked == 3, result.message
    intruder = Intruder(log)
    yield log, intruder
    intruder.close()


def check(log: AuditLog, key, first_bad: int | None, *words: str) -> str:
    result = log.verify(key.public_key())
    assert not result.ok
    assert result.first_bad_index == first_bad, result.message
    for w in words:
        assert w in result.message, result.message
    return result.message


def test_edited_entry(setup, key):
    log, x = setup
    _, _, _, entries = x.block(20)
    entries[3] = entries[3].replace(b'"allow"', b'"block"')
    x.set_entries(20, entries)
    check(log, key, 23, "entry 23 was altered")


def test_deleted_entry_inside_a_block(setup, key):
    log, x = setup
    _, _, _, entries = x.block(20)
    del entries[3]
    x.set_entries(20, entries)
    msg = check(log, key, 23, "entry 23 was removed", "9 entries instead of 10")
    assert "exact: the leaf hashes recorded for entries 0..59 match" in msg  # head 60 confirms


def test_reordered_entries(setup, key):
    log, x = setup
    _, _, _, entries = x.block(20)
    entries[3], entries[6] = entries[6], entries[3]
    x.set_entries(20, entries)
    check(log, key, 23, "entry 23 was altered")


def test_reordered_blocks(setup, key):
    log, x = setup
    x.q("UPDATE audit_log_blocks SET start = -1 WHERE start = 30")
    x.q("UPDATE audit_log_blocks SET start = 30 WHERE start = 20")
    x.q("UPDATE audit_log_blocks SET start = 20 WHERE start = -1")
    check(log, key, 20, "block holding entries 20..29 is out of place", "block chain breaks")


def test_deleted_block(setup, key):
    log, x = setup
    x.q("DELETE FROM audit_log_blocks WHERE start = 30")
    check(log, key, 30, "entries 30..39 are missing")


def test_deleted_block_and_renumbered(setup, key):
    log, x = setup
    x.q("DELETE FROM audit_log_blocks WHERE start = 30")
    for s in (40, 50):
        x.q("UPDATE audit_log_blocks SET start = ? WHERE start = ?", s - 10, s)
    check(log, key, 30, "block holding entries 30..39 is out of place", "first untrusted entry 30")


def test_truncated_below_a_signed_head(setup, key):
    log, x = setup
    x.q("DELETE FROM audit_log_blocks WHERE start >= 50")
    msg = check(log, key, 50, "truncated below a signed head", "first missing entry 50")
    assert "(size 60)" in msg
    assert log.verify(key.public_key()).size == 50


def test_truncation_with_heads_deleted_is_caught_by_a_head_kept_elsewhere(setup, key):
    log, x = setup
    kept = SignedTreeHead.from_json(log.latest_head().to_json())  # e.g. published by `audit sign`
    x.q("DELETE FROM audit_log_blocks WHERE start >= 40")
    x.q("DELETE FROM audit_log_heads WHERE tree_size > 40")
    assert log.verify(key.public_key()).ok  # nothing inside the database shows it …
    result = log.verify(key.public_key(), trusted_heads=[kept])  # … but the kept head does
    assert not result.ok and result.first_bad_index == 40
    assert "trusted tree head (size 60)" in result.message


def test_edit_with_rewritten_hashes_is_caught_by_the_signed_heads(setup, key):
    log, x = setup
    _, _, _, entries = x.block(20)
    entries[5] = entries[5].replace(b'"allow"', b'"block"')
    x.set_entries(20, entries)
    x.rehash_from(20)
    msg = check(log, key, 20, "does not match the log", "an entry in 20..39", "(size 40)")
    assert "first untrusted entry 20" in msg


def test_forged_signature(setup, key):
    log, x = setup
    hid, sig = x.q("SELECT id, signature FROM audit_log_heads WHERE tree_size = 40")[0]
    sig = bytes(sig)
    x.q(
        "UPDATE audit_log_heads SET signature = ? WHERE id = ?",
        sig[:-1] + bytes([sig[-1] ^ 1]),
        hid,
    )
    result = log.verify(key.public_key())
    assert not result.ok and result.first_bad_index is None
    assert f"signed tree head #{hid} (size 40) has an invalid signature" in result.message


def test_head_signed_with_another_key(setup, key):
    log, _ = setup
    with AuditLog.open(
        log.url,
        signing_key=Ed25519PrivateKey.generate(),
        schema=getattr(log.backend, "schema", None),
    ) as rogue:
        rogue.sign_tree_head()
    result = log.verify(key.public_key())
    assert not result.ok and "(size 60) has an invalid signature" in result.message
    with AuditLog.open(log.url, schema=getattr(log.backend, "schema", None)) as keyless:
        with pytest.raises(ConfigError, match="cannot vouch for the log"):
            keyless.verify()  # the key stored in the log is never used to check it
        result = keyless.verify(integrity_only=True)  # the rogue head's root does match …
    assert result.ok and not result.signatures_checked and result.trusted_size == 0
    assert result.message.startswith("INTEGRITY ONLY, signatures NOT checked")  # … but no OK


def test_wrong_public_key(setup):
    log, _ = setup
    result = log.verify(Ed25519PrivateKey.generate().public_key())
    assert not result.ok and "invalid signature" in result.message
    assert len(result.problems) == 3


def test_entry_rewritten_as_text_by_a_sql_shell(setup, key):
    log, x = setup
    if log.backend.dialect != "sqlite":
        pytest.skip("only SQLite lets a column change type")
    _, _, _, entries = x.block(10)
    x.q("UPDATE audit_log_blocks SET entries = ? WHERE start = 10", SEP.join(entries).decode())
    assert log.verify(key.public_key()).ok  # same bytes, same hashes
    entries[0] = entries[0].replace(b"allow", b"block")
    x.q("UPDATE audit_log_blocks SET entries = ? WHERE start = 10", SEP.join(entries).decode())
    check(log, key, 10, "entry 10 was altered")
    assert log.entry(11) == entry(11)


def _verify_paged(log: AuditLog, key, chunk: int, workers: int = 1):
    from bastion.audit.verify import verify_backend

    snap = log.backend.snapshot()
    try:
        return verify_backend(snap, key.public_key(), chunk=chunk, workers=workers)
    finally:
        snap.close()


@pytest.mark.parametrize("chunk", [1, 4, 16, 1 << 16])
def test_pages_of_any_size_give_the_same_verdicts(sqlite_url, key, chunk):
    with AuditLog.open(sqlite_url, signing_key=key, checkpoint_every=10) as log:
        for s in range(0, 100, 7):
            log.append_many([entry(i) for i in range(s, min(s + 7, 100))])
        clean = _verify_paged(log, key, chunk)
        assert clean.ok and clean.size == 100 and clean.root == log.root()
        assert clean.heads_checked == len(log.heads()) == 10
        x = Intruder(log)
        _, _, _, entries = x.block(49)
        entries[4] = entries[4].replace(b"allow", b"block")  # entry 53
        x.set_entries(49, entries)
        bad = _verify_paged(log, key, chunk)
        assert bad.first_bad_index == 53 and "entry 53 was altered" in bad.message
        assert [h.tree_size for h in log.heads()][3:5] == [42, 56]  # heads after crossing 40, 50
        x.rehash_from(49)  # careful intruder: the heads from 56 on no longer match
        bad = _verify_paged(log, key, chunk)
        assert bad.first_bad_index == 42 and "(size 56) does not match" in bad.message
        x.close()


def test_parallel_verification_agrees(sqlite_url, key):
    with AuditLog.open(sqlite_url, signing_key=key, checkpoint_every=100) as log:
        log.append_many([entry(i) for i in range(1000)])
        log.append_many([entry(i) for i in range(1000, 1250)])
        serial = _verify_paged(log, key, 64)
        parallel = _verify_paged(log, key, 64, workers=2)
        assert serial.ok and parallel.ok and serial.root == parallel.root == log.root()
        assert parallel.heads_checked == serial.heads_checked == 2
        x = Intruder(log)
        _, _, _, entries = x.block(1000)
        entries[77] = b'{"forged":1}'
        x.set_entries(1000, entries)
        x.close()
        result = _verify_paged(log, key, 64, workers=2)
        assert result.first_bad_index == 1077 and "entry 1077 was altered" in result.message
        assert log.verify(key.public_key(), workers=2).first_bad_index == 1077
