"""Engine and session creation. Nothing is built at import; callers pass a URL or use
``default_url()`` (``$BASTION_DB`` or ``sqlite:///~/.local/share/bastion/bastion.db``)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, make_url, text
from sqlalchemy.exc import ArgumentError, DBAPIError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from bastion.errors import StoreError


class Base(DeclarativeBase):
    """Declarative base shared by every table of the record store."""


def default_url() -> str:
    if os.environ.get("BASTION_DB"):
        return os.environ["BASTION_DB"]
    home = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "bastion"
    return f"sqlite:///{home / 'bastion.db'}"


def shown_url(url: str) -> str:
    """``url`` as messages show it: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparseable: nothing to mask
        return url


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout=10000")  # first: switching to WAL takes the lock too
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA synchronous=FULL")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str | None = None, *, create: bool = True) -> Engine:
    """Create an engine (WAL + synchronous=FULL for SQLite) and the tables if ``create``."""
    url = url or default_url()
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite:///"):
        folder = Path(url.removeprefix("sqlite:///").split("?")[0]).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create the folder of database {shown_url(url)!r}: {exc}"
            ) from None
    pg = url.startswith("postgresql")
    try:
        # pre-ping: a replica outlives a PostgreSQL restart or fail-over without 500s
        engine = create_engine(url, future=True, pool_pre_ping=pg)
    except (ArgumentError, ImportError, ValueError, TypeError) as exc:
        raise StoreError(f"cannot use database URL {shown_url(url)!r}: {exc}") from None
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    if create:
        _import_tables()
        try:
            _create_tables(engine)
        except DBAPIError as exc:
            engine.dispose()
            first = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else exc
            raise StoreError(f"cannot open database {shown_url(url)!r}: {first}") from None
    return engine


_DDL_LOCK = 0x62737464  # "bstd": the advisory lock under which replicas create the tables


def _create_tables(engine: Engine) -> None:
    """Create the missing tables; processes opening a fresh store at once would race on
    ``CREATE TABLE``: on PostgreSQL they take turns under an advisory lock, on SQLite the
    loser of a race checks again."""
    if engine.dialect.name != "postgresql":
        # SQLite: another process made a table between check and create, or holds the
        # write lock past the busy timeout while it creates them: check again, backing off.
        for attempt in range(10):
            try:
                Base.metadata.create_all(engine)
                return
            except DBAPIError as exc:
                raced = any(m in str(exc.orig) for m in ("already exists", "database is locked"))
                if not raced or attempt == 9:
                    raise
                time.sleep(0.05 * (attempt + 1))
    with engine.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _DDL_LOCK})
        Base.metadata.create_all(conn)


def _import_tables() -> None:
    """Import every module that declares tables so create_all sees them."""
    import bastion.store.blocks
    import bastion.store.keys
    import bastion.store.review_inputs
    import bastion.store.reviews
    import bastion.store.runs
    import bastion.store.sessions  # noqa: F401


def sqlite_write_lock(session: Session, table: str) -> None:
    """On SQLite, take the database's write lock now, at the start of the transaction: a
    read-then-write transaction of two processes (or threads) would otherwise both read
    before either writes. A write that changes nothing takes it. No-op elsewhere."""
    if session.get_bind().dialect.name == "sqlite":
        session.execute(text(f"DELETE FROM {table} WHERE 1 = 0"))


def session_factory(engine: Engine) -> sessionmaker:
    return sessionmaker(engine, expire_on_commit=False)
