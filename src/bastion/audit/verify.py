"""Full verification of an audit log, streaming over one consistent snapshot.

What it checks, in index order, stopping at the first bad entry:

1. the blocks of entries follow each other without a gap or an overlap (a deleted block
   shows as a gap), each holds as many entries as it says, and the block chain (a hash
   over each block's position, size and leaf hashes and the previous block's chain) is
   unbroken (blocks swapped or renumbered);
2. each entry re-hashes to the leaf hash recorded for its position when it was committed
   (an edited, removed, inserted or moved entry no longer matches);
3. each signed tree head (stored in the log, or given as trusted) carries a valid Ed25519
   signature, and the root recomputed over the first ``tree_size`` entries equals the
   signed root (catches an edit whose recorded hashes were rewritten too);
4. no signed head covers more entries than the log holds (truncation below a signed head).

Speed: a block row brings up to 4 096 entries at once; entries are grouped in aligned
pages of 65 536, hashed in one list comprehension, compared with the recorded hashes as one
``bytes``, and the page's tree levels computed in bulk: about two SHA-256 calls per entry
(leaf + interior node). With ``workers > 1`` pages are hashed in a process pool while the
main process reads and checks the blocks and combines the page roots.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from hashlib import sha256
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from bastion.audit.backends import GENESIS, SEP, Backend, as_bytes, block_chain
from bastion.audit.merkle import (
    LEAF_PREFIX,
    Frontier,
    decompose,
    fold,
    leaf_hashes,
    levels_of,
)
from bastion.audit.sth import SignedTreeHead, key_id

CHUNK = 1 << 16


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`. ``first_bad_index`` is the first entry that
    cannot be trusted (None when the entries are fine); ``message`` says what was wrong
    with it, or summarises a clean log in one line."""

    ok: bool
    size: int
    root: bytes
    heads_checked: int
    first_bad_index: int | None
    message: str
    problems: tuple[str, ...] = field(default=())
    key_id: str | None = None
    seconds: float = 0.0

    def __str__(self) -> str:
        return self.message


@dataclass
class _Head:
    head: SignedTreeHead
    label: str


def _first_diff(computed: list[bytes], recorded: bytes) -> int:
    for j, h in enumerate(computed):
        if recorded[32 * j : 32 * j + 32] != h:
            return j
    return len(computed)


def _check_signatures(
    stored: list[tuple[SignedTreeHead, bytes]],
    trusted: Sequence[SignedTreeHead],
    public_key: Ed25519PublicKey | None,
) -> tuple[list[_Head], list[str]]:
    heads: list[_Head] = []
    bad: list[str] = []
    for head, pub in stored:
        label = f"signed tree head #{head.id} (size {head.tree_size})"
        if public_key is not None:
            ok = head.verify(public_key)
        else:
            ok = head.key_id == key_id(pub) and head.verify(Ed25519PublicKey.from_public_bytes(pub))
        if ok:
            heads.append(_Head(head, label))
        else:
            bad.append(
                f"{label} has an invalid signature: forged, or signed by another key "
                "than the one given"
            )
    kids = sorted({key_id(pub) for _, pub in stored})
    if public_key is None and len(kids) > 1:
        bad.append(
            f"the signed tree heads carry {len(kids)} different keys ({', '.join(kids)}): "
            "pass --key to say which one to trust"
        )
    for head in trusted:
        label = f"trusted tree head (size {head.tree_size})"
        if public_key is None:
            bad.append(f"{label} cannot be checked without the public key (--key)")
        elif not head.verify(public_key):
            bad.append(f"{label} has an invalid signature")
        else:
            heads.append(_Head(head, label))
    heads.sort(key=lambda h: h.head.tree_size)
    return heads, bad


def _page_work(
    entries: list[bytes], recorded: bytes, cuts: list[int]
) -> tuple[int, list[bytes], list[list[bytes]]]:
    """Hash one aligned page of entries (runs in a worker process when verifying in
    parallel): returns the offset of the first entry whose leaf hash differs from the
    recorded one (-1 if none), the perfect subtrees covering the good leaves, and those
    covering the first ``c`` leaves for each ``c`` in ``cuts`` that lies within them."""
    p = LEAF_PREFIX
    try:
        leaves = [sha256(p + e).digest() for e in entries]
    except TypeError:  # a value of another type was written into the table
        leaves = leaf_hashes([as_bytes(e) for e in entries])
    bad = -1
    if b"".join(leaves) != recorded:
        bad = _first_diff(leaves, recorded)
        leaves = leaves[:bad]
    levels = levels_of(leaves)
    n = len(leaves)
    return bad, decompose(levels, 0, n), [decompose(levels, 0, c) for c in cuts if c <= n]


class _Pages:
    """Groups structurally sound entries into aligned pages of ``chunk`` leaves, hashes each
    page (inline, or in a process pool), and compares every signed root that falls inside
    it; pages are consumed in order, so the first problem found is the first in the log."""

    def __init__(self, heads: list[_Head], chunk: int, pool: Executor | None, depth: int) -> None:
        self.heads, self.chunk, self.pool, self.depth = heads, chunk, pool, depth
        self.log_chunk = chunk.bit_length() - 1
        self.frontier = Frontier()
        self.tail: list[bytes] = []
        self.entries: list[bytes] = []
        self.recorded: list[bytes] = []
        self.base = 0  # index of the first entry of the page being filled
        self.inflight: deque[tuple[int, int, list[_Head], Any]] = deque()
        self.next = 0  # next head to hand to a page
        self.last_good = 0
        self.checked = 0
        self.problem: tuple[int, str] | None = None

    def add(self, entries: list[bytes], hashes: bytes) -> None:
        off = 0
        while off < len(entries) and self.problem is None:
            take = min(self.chunk - len(self.entries), len(entries) - off)
            self.entries += entries[off : off + take]
            self.recorded.append(hashes[32 * off : 32 * (off + take)])
            off += take
            if len(self.entries) == self.chunk:
                self._dispatch()

    def finish(self) -> bytes:
        if self.entries and self.problem is None:
            self._dispatch()
        while self.inflight and self.problem is None:
            self._collect()
        return fold(self.frontier.nodes + self.tail)

    def _dispatch(self) -> None:
        base, n = self.base, len(self.entries)
        heads = []
        while self.next < len(self.heads) and self.heads[self.next].head.tree_size <= base + n:
            heads.append(self.heads[self.next])
            self.next += 1
        cuts = [h.head.tree_size - base for h in heads]
        args = (self.entries, b"".join(self.recorded), cuts)
        job = self.pool.submit(_page_work, *args) if self.pool else _page_work(*args)
        self.inflight.append((base, n, heads, job))
        self.entries, self.recorded = [], []
        self.base += n
        while len(self.inflight) > self.depth and self.problem is None:
            self._collect()

    def _collect(self) -> None:
        base, n, heads, job = self.inflight.popleft()
        bad, whole, at_cuts = job.result() if isinstance(job, Future) else job
        for h, parts in zip(heads, at_cuts, strict=False):
            if fold(self.frontier.nodes + parts) != h.head.root:
                lg, size = self.last_good, h.head.tree_size
                self.problem = (
                    lg,
                    (
                        f"{h.label} does not match the log: an entry in {lg}..{size - 1} was "
                        f"changed and its recorded hashes rewritten (entries before {lg} match an "
                        f"earlier signed head); first untrusted entry {lg}"
                    ),
                )
                return
            self.last_good = max(self.last_good, h.head.tree_size)
            self.checked += 1
        if bad >= 0:
            self.problem = (
                base + bad,
                (
                    f"entry {base + bad} was altered: it no longer hashes to the leaf recorded for "
                    "its position (edited, or entries were reordered)"
                ),
            )
            self.tail = whole
            self.frontier.size += bad
            return
        if n == self.chunk:
            self.frontier.push(whole[0], self.log_chunk)
        else:
            self.tail = whole
            self.frontier.size += n


def _block_problem(pos: int, n: int, entries: list[bytes], hashes: bytes) -> tuple[int, str]:
    """Where a block whose entry count or hash record is off goes wrong (first index)."""
    leaves = leaf_hashes([as_bytes(e) for e in entries])
    j = min(_first_diff(leaves, hashes), n, len(entries))
    if len(entries) != n:
        how = "removed" if len(entries) < n else "inserted"
        return j, (
            f"entry {pos + j} was altered: the block holding entries {pos}..{pos + n - 1} "
            f"has {len(entries)} entries instead of {n} (one {how} at or after "
            f"{pos + j})"
        )
    return j, f"entry {pos + j} has no recorded leaf hash (the hash record was cut)"


def verify_backend(
    snap: Backend,
    public_key: Ed25519PublicKey | None,
    *,
    trusted_heads: Sequence[SignedTreeHead] = (),
    chunk: int = CHUNK,
    workers: int = 1,
) -> VerifyResult:
    """Verify the log held by ``snap`` (see the module docstring); ``workers > 1`` hashes
    pages in that many processes."""
    t0 = time.perf_counter()
    problems: list[tuple[int, str]] = []
    stored = snap.heads()
    heads, bad_heads = _check_signatures(stored, trusted_heads, public_key)
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        pages = _Pages(heads, chunk, pool, depth=2 * workers if pool else 0)
        pos, prev = 0, GENESIS
        for start, n, chain, hashes, blob in snap.blocks(0):
            start, n = int(start), int(n)
            if start != pos:
                what = (
                    f"entries {pos}..{start - 1} are missing (deleted)"
                    if start > pos
                    else f"entry {start} is recorded twice (blocks overlap)"
                )
                problems.append((min(pos, start), f"entry {min(pos, start)} is bad: {what}"))
                break
            hashes = as_bytes(hashes)
            entries = as_bytes(blob).split(SEP)
            if len(entries) != n or len(hashes) != 32 * n:
                j, msg = _block_problem(pos, n, entries, hashes)
                problems.append((pos + j, msg))
                pages.add(entries[:j], hashes[: 32 * j])
                pos += j
                break
            prev = block_chain(start, n, hashes, prev)
            if prev != as_bytes(chain):
                problems.append(
                    (
                        pos,
                        (
                            f"entry {pos} is out of place: the block chain breaks at the block of "
                            f"entries {pos}..{pos + n - 1} (blocks reordered, removed or renumbered, "
                            "or their recorded hashes rewritten)"
                        ),
                    )
                )
                break
            pages.add(entries, hashes)
            pos += n
            if pages.problem:
                break
        root = pages.finish()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if pages.problem:
        problems.append(pages.problem)
    size = min([pos] + [i for i, _ in problems])
    checked = pages.checked
    if not problems:
        for h in heads[pages.next :]:
            if h.head.tree_size == 0 and h.head.root == fold([]):
                checked += 1
                continue
            problems.append(
                (
                    size,
                    (
                        f"log truncated below a signed head: {h.label} covers {h.head.tree_size} "
                        f"entries but only {size} remain; first missing entry {size}"
                    ),
                )
            )
            break
    seconds = time.perf_counter() - t0
    kid = key_id(public_key) if public_key is not None else None
    if kid is None and stored:
        kid = key_id(stored[-1][1])
    if problems:
        first_bad, msg = min(problems, key=lambda q: q[0])
        rest = [m for _, m in problems if m != msg] + bad_heads
        return VerifyResult(False, size, root, checked, first_bad, msg, (msg, *rest), kid, seconds)
    if bad_heads:
        return VerifyResult(
            False, size, root, checked, None, bad_heads[0], tuple(bad_heads), kid, seconds
        )
    note = ""
    if public_key is None and stored:
        note = (
            " (signatures checked against the key recorded in the log; pass --key to "
            "check them against a key you trust)"
        )
    msg = (
        f"OK: {size} entries, root {root.hex()[:16]}…, {checked} signed tree head(s) verified{note}"
    )
    return VerifyResult(True, size, root, checked, None, msg, (), kid, seconds)
