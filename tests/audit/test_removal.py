"""A removed entry is named at its exact position wherever the log can tell it, and otherwise
by the range it lies in (never at a wrong single position), on SQLite and PostgreSQL.

The log: 50 entries, signed heads at 20 and 40, so entries 0..39 lie below a signed
checkpoint and 40..49 above the last one. Each test removes the first (0), a middle (25), the
last covered (39), the first uncovered (40), a middle uncovered (45) or the last (49) entry,
the way an intruder with write access to the database would:

* ``text``: cut from its block's text only;
* ``count``: cut from the text and the block's entry count lowered;
* ``hash``: cut with its recorded leaf hash too (the block chain left as it was);
* ``row``: its row deleted (a log of single-entry blocks);
* ``rewrite``: cut, later blocks renumbered, every leaf hash and chain recomputed: a
  consistent log of 49 entries that only the signed heads can contradict.
"""

from __future__ import annotations

import hashlib
import struct
import time

import pytest

from bastion.audit import AuditLog, SignedTreeHead
from bastion.audit.backends import GENESIS, SEP
from bastion.audit.sth import sign_head
from tests.audit.conftest import entry
from tests.audit.test_tamper import Intruder

POSITIONS = [0, 25, 39, 40, 45, 49]
LAST_HEAD = 40


def _chain(start: int, n: int, hashes: bytes, prev: bytes) -> bytes:
    return hashlib.sha256(b"\x02" + struct.pack(">QQ", start, n) + hashes + prev).digest()


def _rows(x: Intruder) -> list[list]:
    return [
        [int(s), int(n), bytes(c), bytes(h), bytes(e)]
        for s, n, c, h, e in x.q(
            "SELECT start, n_entries, chain, hashes, entries FROM audit_log_blocks ORDER BY start"
        )
    ]


def _put(x: Intruder, rows: list[list]) -> None:
    x.q("DELETE FROM audit_log_blocks")
    for r in rows:
        x.q(
            "INSERT INTO audit_log_blocks (start, n_entries, chain, hashes, entries) "
            "VALUES (?, ?, ?, ?, ?)",
            *r,
        )


def remove(x: Intruder, k: int, how: str) -> None:
    rows = _rows(x)
    b = next(i for i, r in enumerate(rows) if r[0] <= k < r[0] + r[1])
    start, n, _chain_hash, hashes, blob = rows[b]
    if how == "row":
        assert n == 1
        x.q("DELETE FROM audit_log_blocks WHERE start = ?", start)
        return
    j = k - start
    entries = blob.split(SEP)
    del entries[j]
    rows[b][4] = SEP.join(entries)
    if how in ("count", "hash", "rewrite"):
        rows[b][1] = n - 1
    if how in ("hash", "rewrite"):
        rows[b][3] = hashes[: 32 * j] + hashes[32 * j + 32 :]
    if how == "rewrite":
        for r in rows[b + 1 :]:
            r[0] -= 1
        rows = [r for r in rows if r[1] > 0]
        prev = GENESIS
        for r in rows:
            r[2] = _chain(r[0], r[1], r[3], prev)
            prev = r[2]
    _put(x, rows)


def _build(open_log, key, single: bool):
    """The 50-entry log, its intruder, and a head of all 50 entries signed but kept outside
    the database (as `bastion audit sign --out` would)."""
    log = open_log(signing_key=key, checkpoint_every=20)
    if single:
        for i in range(50):
            log.append(entry(i))
    else:
        for s in range(0, 50, 10):
            log.append_many([entry(i) for i in range(s, s + 10)])
    assert [h.tree_size for h in log.heads()] == [20, LAST_HEAD]
    kept = sign_head(key, 50, log.root(), int(time.time() * 1000))
    assert log.verify(key.public_key(), trusted_heads=[kept]).ok
    return log, Intruder(log), kept


@pytest.fixture()
def blocks(open_log, key):
    """Blocks of 10 entries (batched appends)."""
    log, x, kept = _build(open_log, key, single=False)
    yield log, x, kept
    x.close()


@pytest.fixture()
def singles(open_log, key):
    """Blocks of one entry (single appends)."""
    log, x, kept = _build(open_log, key, single=True)
    yield log, x, kept
    x.close()


@pytest.fixture(params=["blocks", "singles"])
def layout(request, open_log, key):
    """Either of the two."""
    log, x, kept = _build(open_log, key, single=request.param == "singles")
    yield log, x, kept
    x.close()


def _verify(log: AuditLog, key, kept: SignedTreeHead | None = None):
    return log.verify(key.public_key(), trusted_heads=[kept] if kept else [])


@pytest.mark.parametrize("k", POSITIONS)
@pytest.mark.parametrize("how", ["text", "count"])
def test_removed_from_a_block_is_named_exactly(blocks, key, k, how):
    log, x, _ = blocks
    remove(x, k, how)
    r = _verify(log, key)
    assert not r.ok and r.first_bad_index == k, r.message
    assert r.message.startswith(f"entry {k} was removed: the block holding entries ")
    assert "9 entries instead of 10" in r.message
    if k < LAST_HEAD:  # a signed head beyond it confirms the recorded hashes, so the position
        assert "exact: the leaf hashes recorded for entries 0..39 match signed tree head" in (
            r.message
        )
    else:
        assert "exact:" not in r.message  # nothing signed beyond it to confirm
    assert r.trusted_size == (0 if k < 20 else 20 if k < LAST_HEAD else LAST_HEAD)


@pytest.mark.parametrize("k", POSITIONS)
def test_deleted_row_is_named_exactly(singles, key, k):
    log, x, kept = singles
    remove(x, k, "row")
    r = _verify(log, key)
    if k == 49:  # the tail after the last signed head: cannot be told from a shorter log …
        assert r.ok and r.size == 49
        assert "entries 40..48 come after the last signed head (size 40)" in r.message
        r = _verify(log, key, kept)  # … unless a head was kept outside the database
        assert not r.ok and r.first_bad_index == 49
        assert "trusted tree head (size 50) covers 50 entries but only 49 remain" in r.message
        assert "first missing entry 49" in r.message
        return
    assert not r.ok and r.first_bad_index == k, r.message
    assert r.message.startswith(f"entry {k} is missing (deleted): the block after the gap ")


@pytest.mark.parametrize("k", POSITIONS)
def test_removed_with_its_leaf_hash_is_named_by_its_block(blocks, key, k):
    log, x, _ = blocks
    remove(x, k, "hash")
    r = _verify(log, key)
    block = k // 10 * 10
    assert not r.ok and r.first_bad_index == block, r.message
    assert f"the block holding entries {block}..{block + 8} is out of place" in r.message
    assert f"first untrusted entry {block}" in r.message
    if block < 40:  # the next block's position tells how many went missing, and where
        assert f"the next block starts at {block + 10}, so 1 entry of {block}..{block + 9}" in (
            r.message
        )


@pytest.mark.parametrize("k", POSITIONS)
def test_removed_and_everything_rewritten_is_bounded_by_the_signed_heads(layout, key, k):
    log, x, kept = layout
    remove(x, k, "rewrite")
    r = _verify(log, key)
    if k < LAST_HEAD:
        lo, hi = (0, 20) if k < 20 else (20, 40)
        assert not r.ok and r.first_bad_index == lo, r.message
        assert f"signed tree head #{2 if hi == 40 else 1} (size {hi}) does not match" in (r.message)
        assert f"an entry in {lo}..{hi - 1} was changed, removed or inserted" in r.message
        assert f"first untrusted entry {lo}" in r.message
        assert r.trusted_size == lo and lo <= k < hi
        return
    # above the last signed head a consistent rewrite leaves nothing to detect …
    assert r.ok and r.size == 49 and r.trusted_size == LAST_HEAD
    assert "entries 40..48 come after the last signed head (size 40)" in r.message
    r = _verify(log, key, kept)  # … but a kept head shows entries are gone, and from where
    assert not r.ok and r.first_bad_index == 49
    assert "first missing entry 49" in r.message
    assert "the removal may lie anywhere in 40..49" in r.message and r.trusted_size == 40


def test_removed_entry_with_a_recomputed_chain_names_the_range(blocks, key):
    """The intruder recomputes the chain but does not renumber the later blocks: the chain
    then runs on across the gap, which an honest writer never makes, so the gap's own
    position is not trusted."""
    log, x, _ = blocks
    rows = _rows(x)
    entries = rows[2][4].split(SEP)
    del entries[5]  # entry 25
    rows[2][1], rows[2][4] = 9, SEP.join(entries)
    rows[2][3] = rows[2][3][: 32 * 5] + rows[2][3][32 * 6 :]
    prev = GENESIS
    for r in rows:
        r[2] = _chain(r[0], r[1], r[3], prev)
        prev = r[2]
    _put(x, rows)
    r = _verify(log, key)
    assert not r.ok and r.first_bad_index == 20, r.message
    assert "entry 29 is missing, but the block chain runs on across the gap" in r.message
    assert "an entry in 20..29 was removed or changed; first untrusted entry 20" in r.message


def test_edit_with_its_hash_rewritten_elsewhere_is_not_named_too_late(blocks, key):
    """Entry 23's text edited (its recorded hash left), and entry 21's text and recorded hash
    both rewritten: the first content mismatch is 23, but the signed head shows the recorded
    hashes were rewritten too, so the first untrusted entry is 20, not 23."""
    log, x, _ = blocks
    rows = _rows(x)
    entries = rows[2][4].split(SEP)
    entries[3] = entries[3].replace(b'"allow"', b'"block"')  # entry 23
    entries[1] = entries[1].replace(b'"allow"', b'"block"')  # entry 21 …
    h = rows[2][3]
    rows[2][3] = h[:32] + hashlib.sha256(b"\x00" + entries[1]).digest() + h[64:]  # … and hash
    rows[2][4] = SEP.join(entries)
    prev = GENESIS
    for r in rows:
        r[2] = _chain(r[0], r[1], r[3], prev)
        prev = r[2]
    _put(x, rows)
    r = _verify(log, key)
    assert not r.ok and r.first_bad_index == 20, r.message
    assert r.message.startswith("entry 23 was altered")
    assert "the leaf hashes recorded for entries 20..39 do not match signed tree head" in (
        r.message
    )
    assert "first untrusted entry 20" in r.message
