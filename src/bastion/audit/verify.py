"""Full verification of an audit log, streaming over one consistent snapshot.

What it checks, in index order, stopping at the first bad entry:

1. the blocks of entries follow each other without a gap or an overlap (a deleted block
   shows as a gap), each holds as many entries as it has recorded leaf hashes, and the block
   chain (a hash over each block's position, size and leaf hashes and the previous block's
   chain) is unbroken (blocks swapped, renumbered or rewritten);
2. each entry re-hashes to the leaf hash recorded for its position when it was committed
   (an edited, removed, inserted or moved entry no longer matches);
3. each signed tree head (stored in the log, or given as trusted) carries a valid Ed25519
   signature by the **trusted key the caller gives** (never the key recorded in the log,
   which whoever writes the database could replace), and the root recomputed over the first
   ``tree_size`` entries equals the signed root (catches an edit whose recorded hashes were
   rewritten too);
4. no signed head covers more entries than the log holds (truncation below a signed head);
5. optionally, each given witness has cosigned the latest signed head (``witness_keys``).

How a problem is named. Recorded hashes and chains hold no secret; only signatures pin the
content. So a position is named at face value, exactly, where the unsigned records are
intact (an entry edited or removed, a block deleted, the log cut short): then a signed head
beyond the problem, recomputed over the *recorded* leaf hashes, confirms the position when
there is one. Where the records themselves show that they were rewritten (a block chain that
runs on across a gap, recorded hashes that contradict a signed head, a signed root that no
longer matches), the position cannot be known more closely than the signed heads allow, and
the first entry not pinned by a verified head (the "first untrusted entry") is named, with
the range the change lies in.

Speed: a block row brings up to 4 096 entries at once; entries are grouped in aligned
pages of 65 536, hashed in one list comprehension, compared with the recorded hashes as one
``bytes``, and the page's tree levels computed in bulk: about two SHA-256 calls per entry
(leaf + interior node). With ``workers > 1`` pages are hashed in a process pool while the
main process reads and checks the blocks and combines the page roots.
"""

from __future__ import annotations

import multiprocessing
import time
from collections import Counter, deque
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
from bastion.audit.witness import Cosignature
from bastion.errors import ConfigError

CHUNK = 1 << 16
NO_TRUSTED_KEY = (
    "verifying the audit log needs a trusted public key (AuditLog.verify(public_key=...)): "
    "the key stored in the log cannot vouch for the log, since whoever can write the "
    "database can re-sign it; integrity_only=True checks the hash chain alone"
)


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :meth:`AuditLog.verify`. ``first_bad_index`` is the first entry that
    cannot be trusted (None when the entries are fine); ``message`` says what was wrong
    with it, or summarises a clean log in one line. ``signatures_checked`` is False for an
    integrity-only check (then nothing about the log is authenticated, and the message does
    not start with ``OK``); ``trusted_size`` is how many leading entries match a signed head
    verified with the trusted key (or a trusted head or witness cosignature)."""

    ok: bool
    size: int
    root: bytes
    heads_checked: int
    first_bad_index: int | None
    message: str
    problems: tuple[str, ...] = field(default=())
    key_id: str | None = None
    seconds: float = 0.0
    signatures_checked: bool = True
    trusted_size: int = 0

    def __str__(self) -> str:
        return self.message


@dataclass
class _Head:
    head: SignedTreeHead
    label: str
    kind: str  # "signed" (stored, valid), "trusted" (kept elsewhere), "witness", "stored"
    witness: str | None = None  # the witness key id of a cosignature

    @property
    def size(self) -> int:
        return self.head.tree_size


@dataclass
class _Found:
    """A problem: where (``index``), what (``message``; ``{L}`` stands for the first entry
    not pinned by a verified head), and how the position is known: ``content`` (exact at
    face value; a later signed head may confirm it), ``face`` (exact at face value, nothing
    can confirm it), ``rewritten`` (the records were rewritten: named from ``{L}``)."""

    index: int
    message: str
    kind: str


def _first_diff(computed: list[bytes], recorded: bytes) -> int:
    for j, h in enumerate(computed):
        if recorded[32 * j : 32 * j + 32] != h:
            return j
    return len(computed)


def _entries_word(k: int) -> str:
    return "entry" if k == 1 else "entries"


def _check_signatures(
    stored: list[tuple[SignedTreeHead, bytes]],
    trusted: Sequence[SignedTreeHead],
    public_key: Ed25519PublicKey,
) -> tuple[list[_Head], list[str]]:
    heads: list[_Head] = []
    bad: list[str] = []
    kid = key_id(public_key)
    for head, pub in stored:
        label = f"signed tree head #{head.id} (size {head.tree_size})"
        if head.verify(public_key):
            heads.append(_Head(head, label, "signed"))
            continue
        named = key_id(pub)
        why = (
            f"its row names another key, {named}: re-signed or signed by another log"
            if named != kid
            else "forged or damaged"
        )
        bad.append(f"{label} has an invalid signature for the trusted key {kid} ({why})")
    for head in trusted:
        label = f"trusted tree head (size {head.tree_size})"
        if head.verify(public_key):
            heads.append(_Head(head, label, "trusted"))
        else:
            bad.append(f"{label} has an invalid signature for the trusted key {kid}")
    return heads, bad


def _check_cosignatures(
    cosigs: Sequence[Cosignature],
    witness_keys: Sequence[Ed25519PublicKey],
    log_key: Ed25519PublicKey,
) -> tuple[list[_Head], list[str]]:
    """Cosignatures by the given witnesses become heads (their roots are checked against the
    log like any signed root); forged ones are problems; other witnesses' are ignored."""
    keys = {key_id(k): k for k in witness_keys}
    heads: list[_Head] = []
    bad: list[str] = []
    seen: set[bytes] = set()
    for c in cosigs:
        wkey = keys.get(c.witness_key_id)
        if wkey is None or c.signature in seen:
            continue
        seen.add(c.signature)
        where = f" #{c.id}" if c.id is not None else ""
        label = f"witness {c.witness_key_id} cosignature{where} (size {c.tree_size})"
        if c.verify(wkey, log_key):
            head = SignedTreeHead(
                c.tree_size, c.head_timestamp_ms, c.root, c.signature, c.witness_key_id
            )
            heads.append(_Head(head, label, "witness", c.witness_key_id))
        else:
            bad.append(
                f"{label} is invalid: forged, or made for another log key than {key_id(log_key)}"
            )
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
        self.last_good = 0  # the largest head size matched so far
        self.sizes: list[tuple[int, str]] = []  # (size, kind) of the heads matched
        self.checked: Counter[str] = Counter()  # heads matched, by kind
        self.best_witness: dict[str, int] = {}  # witness key id -> largest size matched
        self.problem: _Found | None = None

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

    def matched(self, h: _Head) -> None:
        self.sizes.append((h.size, h.kind))
        self.last_good = max(self.last_good, h.size)
        self.checked[h.kind] += 1
        if h.witness is not None:
            self.best_witness[h.witness] = max(self.best_witness.get(h.witness, -1), h.size)

    def _dispatch(self) -> None:
        base, n = self.base, len(self.entries)
        heads = []
        while self.next < len(self.heads) and self.heads[self.next].size <= base + n:
            heads.append(self.heads[self.next])
            self.next += 1
        cuts = [h.size - base for h in heads]
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
                size = h.size
                # Heads below it bound the change, unless the log's key is shown to have
                # signed two histories: a head of the same size that matched contradicts this
                # one, or a witness disagrees with heads that key signed. Then only witnessed
                # sizes count.
                signed = ("signed", "trusted")
                same = h.kind != "stored" and any(
                    z == size and k != "stored" for z, k in self.sizes
                )
                lg_all = max((z for z, _ in self.sizes if z < size), default=0)
                lg_w = max((z for z, k in self.sizes if z < size and k == "witness"), default=0)
                forked = max((z for z, k in self.sizes if k in signed and z > lg_w), default=None)
                two_histories = same or (h.kind == "witness" and forked is not None)
                lg = lg_w if two_histories else lg_all
                self.last_good = lg
                before = f" (entries before {lg} match an earlier head)" if lg else ""
                fork = ""
                if h.kind == "witness" and forked is not None:
                    fork = (
                        f"; heads signed with the log's key up to size {forked} match the log as "
                        "it is now, so that key signed a history other than the one the witness "
                        "cosigned"
                    )
                elif same:
                    fork = (
                        f"; another head of size {size} matches the log as it is now, so the "
                        "log's key signed two histories"
                    )
                self.problem = _Found(
                    lg,
                    f"{h.label} does not match the log: an entry in {lg}..{size - 1} was "
                    f"changed, removed or inserted and its recorded hashes rewritten{before}"
                    f"{fork}; first untrusted entry {lg}",
                    "rewritten",
                )
                return
            self.matched(h)
        if bad >= 0:
            self.problem = _Found(
                base + bad,
                f"entry {base + bad} was altered: it no longer hashes to the leaf recorded for "
                "its position (edited, or entries were reordered)",
                "content",
            )
            self.tail = whole
            self.frontier.size += bad
            return
        if n == self.chunk:
            self.frontier.push(whole[0], self.log_chunk)
        else:
            self.tail = whole
            self.frontier.size += n


def _block_shape(
    pos: int, n: int, entries: list[bytes], hashes: bytes
) -> tuple[_Found, int] | None:
    """A block whose entries, recorded leaf hashes and count disagree: the problem and how
    many of its leading entries are sound (None when they agree)."""
    m = len(entries)
    if len(hashes) % 32:
        return _Found(
            pos,
            f"the leaf hash record of the block holding entries {pos}..{pos + n - 1} is "
            f"damaged ({len(hashes)} bytes, not a whole number of hashes); first untrusted "
            f"entry {pos}",
            "face",
        ), 0
    h = len(hashes) // 32
    empty = entries.index(b"") if b"" in entries else None
    if m == h == n and empty is None:
        return None
    leaves = leaf_hashes([as_bytes(e) for e in entries])
    j = _first_diff(leaves, hashes)
    block = f"the block holding entries {pos}..{pos + h - 1}"
    count = "" if n == h else f" (and its count says {n})"
    recorded = [hashes[32 * i : 32 * i + 32] for i in range(h)]
    if m < h:
        k = h - m
        if leaves[j:] == recorded[j + k :]:  # the rest moved up: exactly k removed at j
            which = (
                f"entry {pos + j} was removed"
                if k == 1
                else f"entries {pos + j}..{pos + j + k - 1} were removed"
            )
            tail = (
                "; the entries after it still match their recorded leaf hashes one place up"
                if k == 1
                else f"; the entries after them still match their recorded leaf hashes {k} "
                "places up"
            )
            return _Found(
                pos + j, f"{which}: {block} has {m} entries instead of {h}{count}{tail}", "content"
            ), j
        return _Found(
            pos + j,
            f"entry {pos + j} was altered: {block} has {m} entries instead of {h}{count}, "
            f"and the entry at {pos + j} is not the one recorded there (entries edited and "
            "removed)",
            "content",
        ), j
    if m > h:
        k = m - h
        if leaves[j + k :] == recorded[j:]:
            which = (
                f"an entry was inserted at {pos + j}"
                if k == 1
                else f"{k} entries were inserted at {pos + j}"
            )
        else:
            which = f"entry {pos + j} was altered (and entries inserted)"
        return _Found(
            pos + j, f"{which}: {block} has {m} entries instead of {h}{count}", "content"
        ), j
    if n != h:
        return _Found(
            pos,
            f"{block} holds {m} entries and {h} leaf hashes but its count says {n}: the count "
            "was edited, or entries were removed or inserted together with their leaf hashes; "
            f"first untrusted entry {pos}",
            "face",
        ), 0
    if empty is not None and j == empty:
        return _Found(
            pos + j, f"entry {pos + j} was removed: its stored text is empty", "content"
        ), j
    return None  # an ordinary content mismatch: the pages name it


def _chain_break(pos: int, n: int, nxt: tuple[Any, ...] | None) -> _Found:
    more = ""
    if nxt is not None:
        ns = int(nxt[0])
        if ns > pos + n:
            k = ns - pos - n
            more = (
                f"; the next block starts at {ns}, so {k} {_entries_word(k)} of {pos}..{ns - 1} "
                + (
                    "went missing with its leaf hash"
                    if k == 1
                    else "went missing with their leaf hashes"
                )
            )
        elif ns < pos + n:
            more = f"; the next block starts at {ns}, inside this one (entries inserted)"
    return _Found(
        pos,
        f"the block holding entries {pos}..{pos + n - 1} is out of place: the block chain "
        "breaks there (the block was moved or renumbered, or its entries and their leaf "
        f"hashes were rewritten){more}; first untrusted entry {pos}",
        "face",
    )


def _gap(pos: int, start: int, n: int, hashes: bytes, chain: bytes, prev: bytes) -> _Found:
    if start < pos:
        return _Found(
            start,
            f"entry {start} is recorded twice: the block at {start} overlaps the one before it "
            "(entries inserted, or blocks renumbered)",
            "face",
        )
    k = start - pos
    what = f"entry {pos} is" if k == 1 else f"entries {pos}..{start - 1} are"
    if block_chain(start, n, hashes, prev) == chain:
        # An honest writer chains a block onto the one just before it; a chain that runs on
        # across the gap was recomputed, so the blocks before the gap were rewritten.
        return _Found(
            start,
            f"{what} missing, but the block chain runs on across the gap, so the blocks before "
            "it were rewritten with recomputed hashes: an entry in {L}.."
            f"{start - 1} was removed or changed; first untrusted entry {{L}}",
            "rewritten",
        )
    return _Found(
        pos, f"{what} missing (deleted): the block after the gap starts at {start}", "face"
    )


def _recorded_check(
    snap: Backend, heads: list[_Head], after: int
) -> tuple[_Head | None, _Head | None]:
    """Compare the heads beyond ``after`` with the root of the *recorded* leaf hashes (not
    the re-hashed entries): the largest one that matches (the record is authentic up to
    it), and the first that does not (the record was rewritten below it)."""
    targets = sorted((h for h in heads if h.size > after), key=lambda h: h.size)
    good: _Head | None = None
    if not targets:
        return None, None
    f = Frontier()
    pos = ti = 0
    for s, _n, _chain, hashes in snap.blocks(0, with_entries=False):
        s, hashes = int(s), as_bytes(hashes)
        if s != pos or len(hashes) % 32:
            break  # a gap in the record: nothing beyond it can be checked
        leaves = [hashes[i : i + 32] for i in range(0, len(hashes), 32)]
        off = 0
        while ti < len(targets) and targets[ti].size <= pos + len(leaves):
            cut = targets[ti].size - pos
            f.extend_fast(leaves[off:cut])
            off = cut
            if f.root() != targets[ti].head.root:
                return good, targets[ti]
            good = targets[ti]
            ti += 1
        f.extend_fast(leaves[off:])
        pos += len(leaves)
        if ti == len(targets):
            break
    return good, None


def _corroborate(snap: Backend, heads: list[_Head], found: _Found, trusted: int) -> list[_Found]:
    """Confirm a face-value content problem with the signed heads beyond it, or show that
    the recorded hashes were rewritten too (then the position is known only from
    ``trusted``, the largest verified head before it). Returns the problem (and another one
    when the record was rewritten after a confirmed position)."""
    good, bad = _recorded_check(snap, heads, found.index)
    if bad is not None and (good is None or good.size <= found.index):
        lg = trusted
        return [
            _Found(
                lg,
                f"{found.message}; the leaf hashes recorded for entries {lg}..{bad.size - 1} "
                f"do not match {bad.label} either, so they were rewritten too and any entry "
                f"from {lg} on may have been changed; first untrusted entry {lg}",
                "rewritten",
            )
        ]
    out = [found]
    if good is not None:
        found.message += (
            f" (exact: the leaf hashes recorded for entries 0..{good.size - 1} match {good.label})"
        )
        if bad is not None:
            out.append(
                _Found(
                    good.size,
                    f"the leaf hashes recorded for entries {good.size}..{bad.size - 1} do not "
                    f"match {bad.label}: they were rewritten",
                    "rewritten",
                )
            )
    return out


def verify_backend(
    snap: Backend,
    public_key: Ed25519PublicKey | None,
    *,
    check_signatures: bool = True,
    trusted_heads: Sequence[SignedTreeHead] = (),
    witness_keys: Sequence[Ed25519PublicKey] = (),
    cosignatures: Sequence[Cosignature] = (),
    chunk: int = CHUNK,
    workers: int = 1,
) -> VerifyResult:
    """Verify the log held by ``snap`` (see the module docstring) against the trusted
    ``public_key``; ``check_signatures=False`` checks the hash chain alone (and says so).
    ``workers > 1`` hashes pages in that many processes."""
    if check_signatures and public_key is None:
        raise ConfigError(NO_TRUSTED_KEY)
    if not check_signatures and (trusted_heads or witness_keys or cosignatures):
        raise ConfigError(
            "trusted heads and witness cosignatures are signatures: checking them needs the "
            "log's public key, not an integrity-only check"
        )
    t0 = time.perf_counter()
    stored = snap.heads()
    bad_heads: list[str]
    if public_key is not None and check_signatures:
        heads, bad_heads = _check_signatures(stored, trusted_heads, public_key)
        if witness_keys:
            wheads, wbad = _check_cosignatures(
                [*snap.cosignatures(), *cosignatures], witness_keys, public_key
            )
            heads += wheads
            bad_heads += wbad
    else:
        heads = [
            _Head(
                h, f"stored tree head #{h.id} (size {h.tree_size}; signature not checked)", "stored"
            )
            for h, _ in stored
        ]
        bad_heads = []
    heads.sort(key=lambda h: h.size)
    pool = None
    if workers > 1:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    found: _Found | None = None
    try:
        pages = _Pages(heads, chunk, pool, depth=2 * workers if pool else 0)
        pos, prev = 0, GENESIS
        blocks = iter(snap.blocks(0))
        for start, n, chain, hashes, blob in blocks:
            start, n = int(start), int(n)
            hashes, chain = as_bytes(hashes), as_bytes(chain)
            if start != pos:
                found = _gap(pos, start, n, hashes, chain, prev)
                break
            entries = as_bytes(blob).split(SEP)
            shape = _block_shape(pos, n, entries, hashes)
            if shape is not None:
                found, good = shape
                pages.add(entries[:good], hashes[: 32 * good])
                pos += good
                break
            link = block_chain(start, n, hashes, prev)
            if link != chain:
                found = _chain_break(pos, n, next(blocks, None))
                break
            prev = link
            pages.add(entries, hashes)
            pos += n
            if pages.problem:
                break
        root = pages.finish()
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    trusted = pages.last_good if check_signatures else 0
    lg = pages.last_good
    problems: list[_Found] = [p for p in (found, pages.problem) if p is not None]
    for p in problems:
        if p.kind == "rewritten" and "{L}" in p.message:
            p.index, p.message = lg, p.message.replace("{L}", str(lg))
    problems.sort(key=lambda p: p.index)
    if problems and problems[0].kind == "content":
        problems[:1] = _corroborate(snap, heads, problems[0], lg)
    size = min([pos] + [p.index for p in problems])
    checked = sum(pages.checked.values())
    if not problems:
        for h in heads[pages.next :]:
            if h.size == 0 and h.head.root == fold([]):
                pages.matched(h)
                checked += 1
                continue
            below = "a signed head" if check_signatures else "a stored tree head"
            note = ""
            if lg < size:
                note = (
                    f" (entries {lg}..{size - 1} match no head, so if their records were "
                    f"rewritten the removal may lie anywhere in {lg}..{h.size - 1})"
                )
            problems.append(
                _Found(
                    size,
                    f"log truncated below {below}: {h.label} covers {h.size} entries but only "
                    f"{size} remain; first missing entry {size}{note}",
                    "face",
                )
            )
            break
    seconds = time.perf_counter() - t0
    kid = key_id(public_key) if public_key is not None and check_signatures else None

    def result(ok: bool, first: int | None, msg: str, rest: Sequence[str] = ()) -> VerifyResult:
        return VerifyResult(
            ok,
            size,
            root,
            checked,
            first,
            msg,
            (msg, *rest) if not ok else (),
            kid,
            seconds,
            check_signatures,
            min(trusted, size),
        )

    if problems:
        first = problems[0]
        rest = [p.message for p in problems[1:]] + bad_heads
        return result(False, first.index, first.message, rest)
    if bad_heads:
        return result(False, None, bad_heads[0], bad_heads[1:])
    short = root.hex()[:16]
    if not check_signatures:
        return result(
            True,
            None,
            f"INTEGRITY ONLY, signatures NOT checked: {size} entries, root {short}…, hash chain "
            f"and recorded leaf hashes intact, {checked} stored tree head root(s) match; this "
            "does not show that the log is authentic (whoever can write the database could "
            "have rewritten it all): verify with the log's public key",
        )
    signed = pages.checked["signed"] + pages.checked["trusted"]
    latest = max((h.size for h in heads if h.kind in ("signed", "trusted")), default=None)
    missing_witness = []
    for wkey in witness_keys:
        wid = key_id(wkey)
        best = pages.best_witness.get(wid)
        if latest is None:
            missing_witness.append(
                f"no signed tree head for witness {wid} to have cosigned: sign one first"
            )
        elif best is None or best < latest:
            had = f"the largest size it cosigned is {best}" if best is not None else "none found"
            missing_witness.append(
                f"the latest signed tree head (size {latest}) carries no valid cosignature by "
                f"witness {wid} ({had}): run `bastion audit witness`"
            )
    if missing_witness:
        return result(False, None, missing_witness[0], missing_witness[1:])
    if size > 0 and trusted == 0:
        held = "the log holds none" if not stored else "none matches"
        return result(
            False,
            None,
            f"no signed tree head vouches for the log's {size} entries ({held}): nothing "
            f"shows they are authentic; sign a head (`bastion audit sign`, or give the gateway "
            "an audit key)",
        )
    msg = f"OK: {size} entries, root {short}…, {signed} signed tree head(s) verified with key {kid}"
    if witness_keys:
        msg += ", cosigned by witness " + ", ".join(
            f"{key_id(w)} at size {pages.best_witness[key_id(w)]}" for w in witness_keys
        )
    if trusted < size:
        msg += (
            f"; entries {trusted}..{size - 1} come after the last signed head (size {trusted}) "
            "and are only hash-chained until the next one"
        )
    return result(True, None, msg)
