"""Storage for the audit log: SQLite (stdlib ``sqlite3``, WAL, ``synchronous=FULL``) or
PostgreSQL (psycopg 3, ``synchronous_commit=on``), without an ORM so that a group commit
is one ``executemany``/``COPY`` inside one transaction.

Tables (prefix ``audit_log_``):

- ``blocks(start, n_entries, chain, hashes, entries)``: one row per committed batch (at
  most MAX_BLOCK entries): a block chain hash ``SHA-256(0x02 ‖ u64 start ‖ u64 n ‖ hashes ‖
  previous chain)`` that pins the block to its place, the leaf hashes ``SHA-256(0x00 ‖ entry)`` of entries ``start ..
  start+n_entries-1`` concatenated, then the entries' canonical JSON joined by ``\n``
  (canonical JSON never holds a raw newline). Storing batches rather than single entries
  makes a group commit one row and lets verification read a whole batch per row (a
  Python sqlite3 row costs about as much as a SHA-256); the recorded leaf hashes pin each
  entry to its position, so ``verify`` can name the first edited, removed or reordered
  entry;
- ``heads(id, tree_size, timestamp_ms, root, signature, key_id, public_key)``: signed tree
  heads (the ``public_key`` column is a record only: verification takes the trusted key from
  its caller, never from the database it is checking);
- ``cosignatures(id, tree_size, head_timestamp_ms, root, cosigned_ms, witness_key_id,
  signature)``: witness cosignatures of signed tree heads (``bastion audit witness``);
- ``meta(key, value)``: format version.

A writer holds the database's write lock for the whole append (``BEGIN IMMEDIATE`` in
SQLite, a transaction-scoped advisory lock in PostgreSQL), so several processes can share
one log and indices stay dense.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sqlite3
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bastion.audit.sth import SignedTreeHead
from bastion.audit.witness import Cosignature
from bastion.errors import StoreError

FORMAT_VERSION = "1"
MAX_BLOCK = 4096  # entries per row of the blocks table
SEP = b"\n"
CHAIN_PREFIX = b"\x02"
GENESIS = bytes(32)


def block_chain(start: int, n: int, hashes: bytes, prev: bytes) -> bytes:
    """``SHA-256(0x02 ‖ u64 start ‖ u64 n ‖ hashes ‖ prev)``: binds a block to its place."""
    return hashlib.sha256(CHAIN_PREFIX + struct.pack(">QQ", start, n) + hashes + prev).digest()


log = logging.getLogger(__name__)
_SCHEMA_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")

_COSIG_SQLITE = (
    "CREATE TABLE IF NOT EXISTS audit_log_cosignatures (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "tree_size INTEGER NOT NULL, head_timestamp_ms INTEGER NOT NULL, root BLOB NOT NULL, "
    "cosigned_ms INTEGER NOT NULL, witness_key_id TEXT NOT NULL, signature BLOB NOT NULL)"
)
_COSIG_PG = (
    "CREATE TABLE IF NOT EXISTS audit_log_cosignatures (id BIGSERIAL PRIMARY KEY, "
    "tree_size BIGINT NOT NULL, head_timestamp_ms BIGINT NOT NULL, root BYTEA NOT NULL, "
    "cosigned_ms BIGINT NOT NULL, witness_key_id TEXT NOT NULL, signature BYTEA NOT NULL)"
)
_DDL_SQLITE = [
    "CREATE TABLE IF NOT EXISTS audit_log_blocks (start INTEGER PRIMARY KEY, "
    "n_entries INTEGER NOT NULL, chain BLOB NOT NULL, hashes BLOB NOT NULL, "
    "entries BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_log_heads (id INTEGER PRIMARY KEY AUTOINCREMENT, "
    "tree_size INTEGER NOT NULL, timestamp_ms INTEGER NOT NULL, root BLOB NOT NULL, "
    "signature BLOB NOT NULL, key_id TEXT NOT NULL, public_key BLOB NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _COSIG_SQLITE,
]
_DDL_PG = [
    "CREATE TABLE IF NOT EXISTS audit_log_blocks (start BIGINT PRIMARY KEY, "
    "n_entries INTEGER NOT NULL, chain BYTEA NOT NULL, hashes BYTEA NOT NULL, "
    "entries BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_log_heads (id BIGSERIAL PRIMARY KEY, "
    "tree_size BIGINT NOT NULL, timestamp_ms BIGINT NOT NULL, root BYTEA NOT NULL, "
    "signature BYTEA NOT NULL, key_id TEXT NOT NULL, public_key BYTEA NOT NULL)",
    "CREATE TABLE IF NOT EXISTS audit_log_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _COSIG_PG,
]


MAX_INT = 2**63 - 1  # the largest value a BIGINT column holds


class CorruptRow(StoreError):
    """A row of the audit tables holds a value of the wrong type or range: the database was
    edited outside the log (``bastion audit verify`` reports it as tampering)."""


def as_int(value: Any, what: str) -> int:
    """A stored integer (0 … 2⁶³−1), whatever type a hand-edited row gave it, or CorruptRow."""
    v: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        v = value
    elif isinstance(value, float) and value.is_integer():
        v = int(value)
    elif isinstance(value, (str, bytes, bytearray, memoryview)):
        text = value if isinstance(value, str) else bytes(value).decode("ascii", "replace")
        if re.fullmatch(r"\s*[0-9]{1,19}\s*", text):
            v = int(text)
    if v is None or not 0 <= v <= MAX_INT:
        shown = repr(value)[:40]
        raise CorruptRow(f"the audit log's {what} holds {shown}, not an integer in 0..{MAX_INT}")
    return v


def as_bytes(value: Any) -> bytes:
    """A stored entry as bytes, whatever type a hand-edited row gave it."""
    if isinstance(value, bytes):
        return value
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return str(value).encode("utf-8")


def _head(row: Sequence[Any]) -> tuple[SignedTreeHead, bytes]:
    hid, size, ts, root, sig, kid, pub = row
    head = SignedTreeHead(
        as_int(size, "signed head tree_size"),
        as_int(ts, "signed head timestamp_ms"),
        as_bytes(root),
        as_bytes(sig),
        str(kid),
        id=as_int(hid, "signed head id"),
    )
    return head, as_bytes(pub)


class Backend:
    """What the log needs from a database; one connection, used under the caller's lock."""

    dialect = ""
    url = ""
    cosig_ddl = ""

    # --- transactions
    def begin_write(self) -> None: ...
    def commit(self) -> None: ...
    def rollback(self) -> None: ...
    def snapshot(self) -> Backend:
        """A new connection reading one consistent snapshot (for verification)."""
        raise NotImplementedError

    def close(self) -> None: ...

    # --- queries (placeholders written as ``?``)
    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        raise NotImplementedError

    def tail(self) -> tuple[int, bytes]:
        """``(number of entries, chain hash of the last block)``."""
        row = self._exec(
            "SELECT start + n_entries, chain FROM audit_log_blocks ORDER BY start DESC LIMIT 1"
        ).fetchone()
        return (as_int(row[0], "last block's end"), as_bytes(row[1])) if row else (0, GENESIS)

    def tail_size(self) -> int:
        return self.tail()[0]

    def insert_batch(
        self, start: int, prev: bytes, blobs: Sequence[bytes], leaves: Sequence[bytes]
    ) -> None:
        """Write entries ``start ..`` as blocks chained on ``prev`` (the last block's chain)."""
        rows = []
        for off in range(0, len(blobs), MAX_BLOCK):
            part = blobs[off : off + MAX_BLOCK]
            hashes = b"".join(leaves[off : off + MAX_BLOCK])
            prev = block_chain(start + off, len(part), hashes, prev)
            rows.append((start + off, len(part), prev, hashes, SEP.join(part)))
        self._executemany(
            "INSERT INTO audit_log_blocks (start, n_entries, chain, hashes, entries) "
            "VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def insert_head(self, head: SignedTreeHead, public_key: bytes) -> int:
        return int(
            self._exec(
                "INSERT INTO audit_log_heads (tree_size, timestamp_ms, root, signature, key_id, "
                "public_key) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    head.tree_size,
                    head.timestamp_ms,
                    head.root,
                    head.signature,
                    head.key_id,
                    public_key,
                ),
            ).fetchone()[0]
        )

    def heads(self) -> list[tuple[SignedTreeHead, bytes]]:
        rows = self._exec(
            "SELECT id, tree_size, timestamp_ms, root, signature, key_id, public_key "
            "FROM audit_log_heads ORDER BY tree_size, id"
        ).fetchall()
        return [_head(r) for r in rows]

    def has_table(self, name: str) -> bool:
        raise NotImplementedError

    def cosignatures(self) -> list[Cosignature]:
        """Stored witness cosignatures, oldest first (none in a log made before they existed)."""
        if not self.has_table("audit_log_cosignatures"):
            return []
        rows = self._exec(
            "SELECT id, tree_size, head_timestamp_ms, root, cosigned_ms, witness_key_id, "
            "signature FROM audit_log_cosignatures ORDER BY id"
        ).fetchall()
        return [
            Cosignature(
                tree_size=as_int(size, "cosignature tree_size"),
                head_timestamp_ms=as_int(ts, "cosignature head_timestamp_ms"),
                root=as_bytes(root),
                cosigned_ms=as_int(cts, "cosignature cosigned_ms"),
                witness_key_id=str(wkid),
                signature=as_bytes(sig),
                id=as_int(cid, "cosignature id"),
            )
            for cid, size, ts, root, cts, wkid, sig in rows
        ]

    def insert_cosignature(self, cosig: Cosignature) -> int:
        """Store a cosignature (inside the caller's write transaction; makes the table in a
        log written before witnesses existed)."""
        self._exec(self.cosig_ddl)
        return int(
            self._exec(
                "INSERT INTO audit_log_cosignatures (tree_size, head_timestamp_ms, root, "
                "cosigned_ms, witness_key_id, signature) VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    cosig.tree_size,
                    cosig.head_timestamp_ms,
                    cosig.root,
                    cosig.cosigned_ms,
                    cosig.witness_key_id,
                    cosig.signature,
                ),
            ).fetchone()[0]
        )

    def entries(self, start: int, stop: int) -> list[tuple[int, bytes]]:
        """``(index, canonical JSON)`` of the entries ``start <= index < stop`` present."""
        rows = self._exec(
            "SELECT start, entries FROM audit_log_blocks WHERE start >= ? AND start < ? "
            "ORDER BY start",
            (max(0, start - MAX_BLOCK + 1), stop),
        ).fetchall()
        out = []
        for s0, blob in rows:
            for i, e in enumerate(as_bytes(blob).split(SEP), as_int(s0, "block start")):
                if start <= i < stop:
                    out.append((i, e))
        return out

    def blocks(self, start: int = 0, *, with_entries: bool = True) -> Iterator[tuple[Any, ...]]:
        """Block rows ``(start, n_entries, chain, hashes[, entries])`` from the one holding index
        ``start`` on, in order, fetched in pages (a block holds at most MAX_BLOCK entries,
        so the first page starts MAX_BLOCK back)."""
        cols = "start, n_entries, chain, hashes" + (", entries" if with_entries else "")
        page = 16 if with_entries else 1024
        sql = f"SELECT {cols} FROM audit_log_blocks WHERE start >= ? ORDER BY start LIMIT {page}"
        lo = max(0, start - MAX_BLOCK + 1)
        while True:
            rows = self._exec(sql, (lo,)).fetchall()
            if not rows:
                return
            for row in rows:
                first = as_int(row[0], "block start")
                n = as_int(row[1], f"block {first}'s n_entries")
                if first + n > start:
                    yield (first, n, *row[2:])
            lo = as_int(rows[-1][0], "block start") + 1


# ------------------------------------------------------------------------------ SQLite


class SQLiteBackend(Backend):
    dialect = "sqlite"
    cosig_ddl = _COSIG_SQLITE

    def __init__(self, path: str, *, url: str, create: bool = True) -> None:
        """Open the log in the SQLite file ``path``; ``create=False`` opens an existing log
        only, read-write but without creating or altering anything (verification), and
        refuses a file that does not exist or holds no audit log."""
        self.url = url
        self.path = path
        if create:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        elif not Path(path).is_file():
            raise StoreError(
                f"audit log {url!r}: no database at {path} (nothing was created): check --db "
                "or $BASTION_DB"
            )
        try:
            if create:
                self.conn = sqlite3.connect(
                    path, isolation_level=None, check_same_thread=False, timeout=30.0
                )
                self.conn.execute("PRAGMA journal_mode=WAL")
            else:  # mode=rw: never creates the file
                self.conn = sqlite3.connect(
                    Path(path).resolve().as_uri() + "?mode=rw",
                    uri=True,
                    isolation_level=None,
                    check_same_thread=False,
                    timeout=30.0,
                )
            self.conn.execute("PRAGMA synchronous=FULL")  # fsync the WAL at every commit
            self.conn.execute("PRAGMA busy_timeout=30000")
            if create:
                for ddl in _DDL_SQLITE:
                    self.conn.execute(ddl)
                self.conn.execute(
                    "INSERT OR IGNORE INTO audit_log_meta (key, value) VALUES ('format', ?)",
                    (FORMAT_VERSION,),
                )
            elif not self.has_table("audit_log_blocks"):
                self.conn.close()
                raise StoreError(
                    f"{path} holds no audit log (no audit_log_blocks table): check --db or "
                    "$BASTION_DB"
                )
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open audit log {url!r}: {exc}") from None

    def has_table(self, name: str) -> bool:
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)
        ).fetchone()
        return row is not None

    def begin_write(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def begin_read(self) -> None:
        self.conn.execute("BEGIN")

    def commit(self) -> None:
        self.conn.execute("COMMIT")

    def rollback(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def snapshot(self) -> SQLiteBackend:
        other = SQLiteBackend(self.path, url=self.url, create=False)
        other.begin_read()
        # a WAL read transaction pins its snapshot at the first read
        other.conn.execute("SELECT COUNT(*) FROM audit_log_meta").fetchone()
        return other

    def close(self) -> None:
        self.conn.close()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        return self.conn.execute(sql, params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.executemany(sql, rows)


# -------------------------------------------------------------------------- PostgreSQL


class PostgresBackend(Backend):
    dialect = "postgresql"
    cosig_ddl = _COSIG_PG

    def __init__(
        self, conninfo: str, *, url: str, schema: str | None = None, create: bool = True
    ) -> None:
        try:
            import psycopg
        except ImportError:
            raise StoreError(
                "a PostgreSQL audit log needs psycopg: pip install 'bastion-ml[scale]'"
            ) from None
        self._psycopg = psycopg
        self.url, self.conninfo, self.schema = url, conninfo, schema
        if schema is not None and not _SCHEMA_RE.match(schema):
            raise StoreError(f"invalid PostgreSQL schema name {schema!r}: use letters, digits, _")
        self._lock_key = int.from_bytes(
            hashlib.sha256(f"bastion-audit:{schema or 'public'}".encode()).digest()[:8],
            "big",
            signed=True,
        )
        try:
            self._connect(create=create)
            if create:
                # DDL under the advisory lock: concurrent CREATE TABLE IF NOT EXISTS can race.
                with self.conn.transaction():
                    self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
                    for ddl in _DDL_PG:
                        self.conn.execute(ddl)
                    self.conn.execute(
                        "INSERT INTO audit_log_meta (key, value) VALUES ('format', %s) "
                        "ON CONFLICT (key) DO NOTHING",
                        (FORMAT_VERSION,),
                    )
                self.conn.commit()
            elif self._log_missing():
                self.conn.close()
                where = f" (schema {schema})" if schema else ""
                raise StoreError(
                    f"no audit log in {url!r}{where}: no audit_log_blocks table (nothing was "
                    "created): check --db or $BASTION_DB"
                )
        except psycopg.Error as exc:
            raise StoreError(f"cannot open audit log {url!r}: {str(exc).strip()}") from None

    def _connect(self, *, create: bool = True) -> None:
        self.conn = self._psycopg.connect(self.conninfo, autocommit=False)
        with self.conn.transaction():
            self.conn.execute("SET synchronous_commit = on")  # durable at COMMIT
            if self.schema:
                if create:
                    self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
                self.conn.execute(f'SET search_path TO "{self.schema}"')
        self.conn.commit()

    def _log_missing(self) -> bool:
        missing = not self.has_table("audit_log_blocks")
        self.conn.commit()  # end the implicit transaction (a snapshot sets its isolation next)
        return missing

    def has_table(self, name: str) -> bool:
        row = self._exec("SELECT to_regclass(?)", (name,)).fetchone()
        return row is not None and row[0] is not None

    def _alive(self) -> None:
        """Reconnect when the server dropped the connection (between transactions only)."""
        if self.conn.closed or self.conn.broken:
            log.warning("audit log: reconnecting to %s", self.url)
            self._connect(create=False)

    def begin_write(self) -> None:
        # psycopg opens the transaction implicitly; the advisory lock serialises writers.
        # Nothing is written yet, so a connection found dead here is safely reopened once.
        self._alive()
        try:
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))
        except self._psycopg.OperationalError:
            if not self.conn.broken:
                raise
            self._connect(create=False)
            self.conn.execute("SELECT pg_advisory_xact_lock(%s)", (self._lock_key,))

    def commit(self) -> None:
        self.conn.commit()

    def rollback(self) -> None:
        if not self.conn.closed:
            self.conn.rollback()

    def snapshot(self) -> PostgresBackend:
        other = PostgresBackend(self.conninfo, url=self.url, schema=self.schema, create=False)
        other.conn.isolation_level = self._psycopg.IsolationLevel.REPEATABLE_READ
        other.conn.read_only = True
        return other

    def close(self) -> None:
        try:
            if not (self.conn.closed or self.conn.broken):
                self.conn.rollback()
        finally:
            self.conn.close()

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> Any:
        self._alive()
        return self.conn.execute(sql.replace("?", "%s"), params)

    def _executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        with self.conn.cursor() as cur:
            cur.executemany(sql.replace("?", "%s"), rows)

    def drop_schema(self) -> None:
        """Drop this log's schema (tests and benchmarks clean up with it)."""
        if not self.schema:
            raise StoreError("refusing to drop the default schema")
        self.conn.rollback()
        self.conn.execute(f'DROP SCHEMA IF EXISTS "{self.schema}" CASCADE')
        self.conn.commit()


def open_backend(url: str, *, schema: str | None = None, create: bool = True) -> Backend:
    """``sqlite:///PATH`` (``sqlite:////abs/path``), a plain file path (SQLite), or
    ``postgresql://user@host:port/db``. ``create=False`` opens an existing log only and
    creates nothing (a missing database or log is a StoreError)."""
    if url.startswith("sqlite:"):
        if url in ("sqlite://", "sqlite:///:memory:"):
            raise StoreError("an audit log must be durable: use sqlite:///PATH, not memory")
        if not url.startswith("sqlite:///"):
            raise StoreError(
                f"bad SQLite URL {url!r}: write sqlite:///relative.db or sqlite:////abs.db"
            )
        path = str(Path(url.removeprefix("sqlite:///")).expanduser())
        return SQLiteBackend(path, url=url, create=create)
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return PostgresBackend(
                "postgresql://" + url.removeprefix(prefix), url=url, schema=schema, create=create
            )
    if url and "://" not in url and url != ":memory:":
        return SQLiteBackend(str(Path(url).expanduser()), url=url, create=create)
    raise StoreError(
        f"unsupported audit log URL {url!r}: use sqlite:///PATH, a file path, or "
        "postgresql://USER@HOST/DB"
    )
