"""The tamper-evident, append-only audit log.

Each entry is a JSON object stored as canonical JSON (sorted keys, no spaces, UTF-8, no
NaN); its position is its leaf index in an RFC 6962 Merkle tree. ``append`` returns only
after the transaction holding the entry has committed (SQLite WAL with
``synchronous=FULL``, PostgreSQL with ``synchronous_commit=on``), so an acknowledged entry
survives a crash. ``append_many`` writes a whole batch in one transaction (group commit);
:class:`bastion.audit.committer.GroupCommitter` gathers concurrent requests into such
batches. With a signing key the log signs a tree head every ``checkpoint_every`` entries,
inside the same transaction.

Usage::

    log = AuditLog.open("sqlite:///audit.db", signing_key=key)
    i = log.append({"event": "predict", "verdict": "allow"})
    proof = log.inclusion_proof(i)
    assert verify_inclusion(leaf_hash(log.entry_bytes(i)), i, log.size(), proof, log.root())
    log.verify(key.public_key()).ok  # a trusted key; never the one stored in the log
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bastion.audit.backends import SEP, Backend, CorruptRow, as_bytes, open_backend
from bastion.audit.merkle import Frontier, MerkleTree, leaf_hashes
from bastion.audit.sth import SignedTreeHead, public_bytes, require_key, sign_head
from bastion.audit.verify import VerifyResult, verify_backend
from bastion.audit.witness import Cosignature
from bastion.errors import ConfigError, StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(entry: dict[str, Any]) -> bytes:
    """Canonical JSON bytes of an entry: sorted keys, no spaces, UTF-8, finite numbers."""
    if not isinstance(entry, dict):
        raise ConfigError(
            f"an audit entry must be a JSON object (dict), got {type(entry).__name__}"
        )
    try:
        return _ENCODER.encode(entry).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ConfigError(
            f"audit entry is not canonical JSON ({exc}): use str/int/finite float/bool/None, "
            "lists and dicts with string keys"
        ) from None


def _decode(index: int, blob: bytes) -> dict[str, Any]:
    """A stored entry's JSON; CorruptRow when it is not a JSON object (an edited row)."""
    try:
        entry = json.loads(blob)
    except (ValueError, RecursionError):
        entry = None
    if not isinstance(entry, dict):
        raise CorruptRow(
            f"audit entry {index} is not a JSON object (the database was edited): run "
            "`bastion audit verify`"
        )
    return entry


def _db_error(exc: Exception) -> bool:
    """True for errors of the database drivers (sqlite3 or psycopg)."""
    mod = type(exc).__module__
    return mod.startswith(("sqlite3", "psycopg"))


class AuditLog:
    """An append-only log of JSON entries with Merkle proofs and signed tree heads.

    Thread-safe: one lock serialises this object's use of its connection. Several
    processes may share one database (writers take the database's write lock)."""

    def __init__(
        self,
        backend: Backend,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        checkpoint_every: int = 1000,
    ) -> None:
        if checkpoint_every < 0:
            raise ConfigError("checkpoint_every must be ≥ 0 (0 turns automatic signing off)")
        self.backend = backend
        self.signing_key = signing_key
        self.checkpoint_every = checkpoint_every
        self._lock = threading.RLock()
        self._frontier: Frontier | None = None  # mirrors the committed leaves, for signing
        self._tree: MerkleTree | None = None  # built on the first proof / root request
        self._closed = False

    @classmethod
    def open(
        cls,
        url: str | None = None,
        *,
        signing_key: Ed25519PrivateKey | None = None,
        checkpoint_every: int = 1000,
        schema: str | None = None,
        create: bool = True,
    ) -> AuditLog:
        """Open (creating the tables if needed) the log at ``url``: ``sqlite:///PATH`` or a
        plain file path (the default is :func:`bastion.store.db.default_url`) or
        ``postgresql://...``; ``schema`` puts a PostgreSQL log in its own schema.
        ``create=False`` opens an existing log only: a database that does not exist, or
        holds no audit log, is a StoreError and nothing is created (verification)."""
        if url is None:
            from bastion.store.db import default_url

            url = default_url()
        return cls(
            open_backend(url, schema=schema, create=create),
            signing_key=signing_key,
            checkpoint_every=checkpoint_every,
        )

    @property
    def url(self) -> str:
        return self.backend.url

    # ------------------------------------------------------------------ appending

    def append(self, entry: dict[str, Any]) -> int:
        """Append one entry; returns its index once it is durable."""
        return self.append_encoded([canonical_json(entry)])[0]

    def append_many(self, entries: Sequence[dict[str, Any]]) -> list[int]:
        """Append entries in one transaction (group commit); returns their indices."""
        return self.append_encoded([canonical_json(e) for e in entries])

    def append_encoded(self, blobs: Sequence[bytes]) -> list[int]:
        """Append entries already in canonical JSON (see :func:`canonical_json`)."""
        if not blobs:
            return []
        if any(SEP in b for b in blobs):
            raise ConfigError(
                "an encoded audit entry holds a raw newline: encode it with canonical_json"
            )
        leaves = leaf_hashes(blobs)
        n = len(blobs)
        with self._lock:
            self._check_open()
            b = self.backend
            try:
                b.begin_write()
                start, prev = b.tail()
                b.insert_batch(start, prev, blobs, leaves)
                ce = self.checkpoint_every
                if self.signing_key is not None and ce and (start + n) // ce > start // ce:
                    frontier = self._frontier_at(start)
                    head = self._sign(start + n, frontier.root_with(leaves))
                    b.insert_head(head, public_bytes(self.signing_key))
                b.commit()
            except Exception as exc:
                self._safe_rollback()
                if _db_error(exc):
                    raise StoreError(f"audit append to {self.url} failed: {exc}") from exc
                raise
            if self._frontier is not None and self._frontier.size == start:
                self._frontier.extend_fast(leaves)
            if self._tree is not None and self._tree.size == start:
                self._tree.extend(leaves)
        return list(range(start, start + n))

    # ------------------------------------------------------------------ reading

    def size(self) -> int:
        """Number of entries (the end of the last committed block)."""
        with self._lock:
            self._check_open()
            return self._read(self.backend.tail_size)

    def entry_bytes(self, index: int) -> bytes:
        """The stored canonical JSON of entry ``index`` (what its leaf hash covers)."""
        rows = self._read(self.backend.entries, index, index + 1)
        if not rows:
            raise ConfigError(f"no audit entry {index}: the log holds {self.size()} entries")
        return rows[0][1]

    def entry(self, index: int) -> dict[str, Any]:
        return _decode(index, self.entry_bytes(index))

    def entries(self, start: int, stop: int) -> list[dict[str, Any]]:
        """Entries ``start .. stop-1`` (those present)."""
        return [_decode(i, e) for i, e in self._read(self.backend.entries, start, stop)]

    def tail(self, n: int) -> list[tuple[int, dict[str, Any]]]:
        size = self.size()
        rows = self._read(self.backend.entries, max(0, size - n), size)
        return [(i, _decode(i, e)) for i, e in rows]

    def heads(self) -> list[SignedTreeHead]:
        """Stored signed tree heads, smallest tree first."""
        return [h for h, _ in self._read(self.backend.heads)]

    def latest_head(self) -> SignedTreeHead | None:
        heads = self.heads()
        return max(heads, key=lambda h: (h.tree_size, h.timestamp_ms)) if heads else None

    def cosignatures(self) -> list[Cosignature]:
        """Witness cosignatures stored in the log database, oldest first."""
        return self._read(self.backend.cosignatures)

    def add_cosignature(self, cosig: Cosignature) -> int:
        """Store a witness cosignature beside the heads (see :mod:`bastion.audit.witness`)."""
        with self._lock:
            self._check_open()
            b = self.backend
            try:
                b.begin_write()
                cid = b.insert_cosignature(cosig)
                b.commit()
            except Exception as exc:
                self._safe_rollback()
                if _db_error(exc):
                    raise StoreError(f"cannot store a cosignature in {self.url}: {exc}") from exc
                raise
        return cid

    # ------------------------------------------------------------------ Merkle tree

    def root(self, size: int | None = None) -> bytes:
        """RFC 6962 root hash of the first ``size`` entries (default: all)."""
        with self._lock:
            tree = self._synced_tree()
            return tree.root(self._check_size(size, tree.size))

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """Audit path of entry ``index`` in the tree of ``size`` entries (RFC 6962 §2.1.1)."""
        with self._lock:
            tree = self._synced_tree()
            size = self._check_size(size, tree.size)
            if not 0 <= index < size:
                raise ConfigError(f"entry index {index} is outside a tree of {size} entries")
            return tree.inclusion_proof(index, size)

    def consistency_proof(self, old: int, new: int | None = None) -> list[bytes]:
        """Proof that the first ``old`` entries are a prefix of the first ``new``
        (RFC 6962 §2.1.2)."""
        with self._lock:
            tree = self._synced_tree()
            new = self._check_size(new, tree.size)
            if not 0 <= old <= new:
                raise ConfigError(f"old size {old} must lie between 0 and the new size {new}")
            return tree.consistency_proof(old, new)

    def leaf_hash(self, index: int) -> bytes:
        with self._lock:
            tree = self._synced_tree()
            if not 0 <= index < tree.size:
                raise ConfigError(f"entry index {index} is outside the log of {tree.size} entries")
            return tree.leaf(index)

    # ------------------------------------------------------------------ signing

    def sign_tree_head(self) -> SignedTreeHead:
        """Sign the current size and root now and store the head in the log database."""
        key = require_key(self.signing_key)
        with self._lock:
            self._check_open()
            b = self.backend
            try:
                b.begin_write()
                size = b.tail_size()
                head = self._sign(size, self._frontier_at(size).root())
                hid = b.insert_head(head, public_bytes(key))
                b.commit()
            except Exception as exc:
                self._safe_rollback()
                if _db_error(exc):
                    raise StoreError(f"cannot store a tree head in {self.url}: {exc}") from exc
                raise
        log.info("signed tree head: size %d root %s", head.tree_size, head.root.hex())
        return SignedTreeHead(
            head.tree_size, head.timestamp_ms, head.root, head.signature, head.key_id, id=hid
        )

    def _sign(self, size: int, root: bytes) -> SignedTreeHead:
        key = require_key(self.signing_key)
        return sign_head(key, size, root, int(time.time() * 1000))

    # ------------------------------------------------------------------ verification

    def verify(
        self,
        public_key: Ed25519PublicKey | None = None,
        *,
        integrity_only: bool = False,
        trusted_heads: Sequence[SignedTreeHead] = (),
        witness_keys: Sequence[Ed25519PublicKey] = (),
        cosignatures: Sequence[Cosignature] = (),
        workers: int = 1,
    ) -> VerifyResult:
        """Re-hash every entry and check the stored leaf hashes and every signed tree head
        (and ``trusted_heads`` kept elsewhere) against ``public_key``; names the first bad
        entry. ``workers > 1`` hashes in that many processes (worth it from a few hundred
        thousand entries).

        The key must come from the caller (or be this log's own signing key, configured by
        the deployment): the public key stored in the database cannot vouch for it, since
        whoever can write the database can re-sign it. Without one this raises ConfigError,
        unless ``integrity_only=True``, which checks the hash chain and recorded hashes alone
        and says that no signature was checked. ``witness_keys`` additionally require a valid
        cosignature by each witness on the latest signed head (stored in the log, or among
        ``cosignatures``)."""
        if public_key is None and self.signing_key is not None and not integrity_only:
            public_key = self.signing_key.public_key()
        self._check_open()
        try:
            snap = self.backend.snapshot()
        except Exception as exc:
            if _db_error(exc):
                raise StoreError(f"cannot read audit log {self.url}: {exc}") from exc
            raise
        try:
            return verify_backend(
                snap,
                public_key,
                check_signatures=not integrity_only,
                trusted_heads=trusted_heads,
                witness_keys=witness_keys,
                cosignatures=cosignatures,
                workers=workers,
            )
        except CorruptRow as exc:  # a hand-edited row: tampering, reported as a failure
            return VerifyResult(
                ok=False,
                size=0,
                root=b"",
                heads_checked=0,
                first_bad_index=None,
                message=f"{exc}: the database was edited outside the log",
                signatures_checked=not integrity_only,
            )
        except Exception as exc:
            if _db_error(exc):
                raise StoreError(f"cannot read audit log {self.url}: {exc}") from exc
            raise
        finally:
            snap.close()

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        with self._lock:
            if not self._closed:
                self._closed = True
                self.backend.close()

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError("the audit log is closed")

    def _safe_rollback(self) -> None:
        try:
            self.backend.rollback()
        except Exception:  # the connection may be gone; the transaction is then void anyway
            log.debug("rollback failed", exc_info=True)

    def _read(self, fn: Callable[..., T], *args: Any) -> T:
        with self._lock:
            self._check_open()
            try:
                out = fn(*args)
                if self.backend.dialect == "postgresql":
                    self.backend.commit()  # end the implicit read transaction
                return out
            except Exception as exc:
                self._safe_rollback()
                if _db_error(exc):
                    raise StoreError(f"cannot read audit log {self.url}: {exc}") from exc
                raise

    @staticmethod
    def _check_size(size: int | None, current: int) -> int:
        if size is None:
            return current
        if not 0 <= size <= current:
            raise ConfigError(f"tree size {size} is outside the log's 0..{current} entries")
        return size

    def _leaves_between(self, start: int, stop: int) -> list[bytes]:
        out: list[bytes] = []
        pos = start
        for s, n, _chain, hashes in self.backend.blocks(start, with_entries=False):
            s, n, hashes = int(s), int(n), as_bytes(hashes)
            if pos >= stop:
                break
            if s > pos or len(hashes) != 32 * n:
                raise StoreError(
                    f"audit log {self.url} has no leaf hash for entry {pos}: run "
                    "`bastion audit verify`"
                )
            lo, hi = pos - s, min(n, stop - s)
            out.extend(hashes[32 * i : 32 * i + 32] for i in range(lo, hi))
            pos = s + hi
        if pos < stop:
            raise StoreError(f"audit log {self.url} has no leaf hash for entry {pos}")
        return out

    def _frontier_at(self, size: int) -> Frontier:
        """The frontier of the committed tree of ``size`` entries (call under the write
        lock, inside the transaction)."""
        f = self._frontier
        if f is None or f.size > size:
            f = Frontier()
        if f.size < size:
            f.extend_fast(self._leaves_between(f.size, size))
        self._frontier = f
        return f

    def _synced_tree(self) -> MerkleTree:
        self._check_open()
        size = self._read(self.backend.tail_size)
        tree = self._tree
        if tree is None or tree.size > size:
            tree = MerkleTree()
        if tree.size < size:
            tree.extend(self._read(self._leaves_between, tree.size, size))
        self._tree = tree
        return tree


__all__ = ["AuditLog", "canonical_json"]
