"""Blocked clients of the gateway: one row per block of an API key.

A block is made by the guard (its verdict for a request was ``block``) or by an admin, and
holds the reasons, the request that caused it, when it was made and when it lapses
(``expires``; None = until removed). Removing a block keeps the row (``removed``,
``removed_by``), so the history stays in the store as well as in the audit log. A block
is *active* while it is neither removed nor expired; an expired block behaves as absent.
Every time is UTC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import Engine, Integer, Select, String, Text, or_, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from bastion.errors import StoreError
from bastion.store.db import Base, session_factory, sqlite_write_lock
from bastion.store.ids import storable
from bastion.store.keys import ApiKey, KeyInfo
from bastion.store.types import UTCDateTime


class NotBlocked(StoreError):
    """The client has no active block (the API answers 404)."""


class UnknownClient(StoreError):
    """No API key has this id (the API answers 404)."""


class ClientBlock(Base):
    __tablename__ = "client_blocks"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    client_key_id: Mapped[int] = mapped_column(Integer, index=True)
    reasons_json: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    expires: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    created_by: Mapped[str] = mapped_column(String(64))
    removed: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    removed_by: Mapped[str | None] = mapped_column(String(64), nullable=True)


@dataclass(frozen=True)
class Block:
    """A block record as routes, the CLI and the dashboard see it."""

    id: int
    client_id: int
    reasons: list[str] = field(hash=False)
    request_id: str | None
    created: datetime
    expires: datetime | None
    created_by: str
    removed: datetime | None = None
    removed_by: str | None = None

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def active_at(self, now: datetime) -> bool:
        return self.removed is None and (self.expires is None or self.expires > now)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _aware(t: datetime | None) -> datetime | None:
    # SQLite drops the zone on the way back: every stored time is UTC.
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _block(row: ClientBlock) -> Block:
    return Block(
        id=row.id,
        client_id=row.client_key_id,
        reasons=list(json.loads(row.reasons_json)),
        request_id=row.request_id,
        created=_aware(row.created),
        expires=_aware(row.expires),
        created_by=row.created_by,
        removed=_aware(row.removed),
        removed_by=row.removed_by,
    )


def _active(client_id: int | None, now: datetime) -> Select[tuple[ClientBlock]]:
    query = select(ClientBlock).where(
        ClientBlock.removed.is_(None),
        or_(ClientBlock.expires.is_(None), ClientBlock.expires > now),
    )
    if client_id is not None:
        query = query.where(ClientBlock.client_key_id == client_id)
    return query.order_by(ClientBlock.created.desc(), ClientBlock.id.desc())


def client_info(engine: Engine, client_id: int) -> KeyInfo | None:
    """The API key ``client_id`` (revoked ones included), or None when there is none."""
    if not storable(engine, client_id):
        return None
    with session_factory(engine)() as session:
        row = session.get(ApiKey, client_id)
        if row is None:
            return None
        created, revoked = _aware(row.created), _aware(row.revoked)
        return KeyInfo(row.id, row.name, row.role, row.prefix, created, revoked)


def require_client(engine: Engine, client_id: int) -> KeyInfo:
    info = client_info(engine, client_id)
    if info is None:
        raise UnknownClient(f"no API key with id {client_id}: see `bastion keys list`")
    return info


def get_block(engine: Engine, client_id: int, *, now: datetime | None = None) -> Block | None:
    """The client's active block (the newest, should there be two), or None."""
    if not storable(engine, client_id):
        return None
    with session_factory(engine)() as session:
        row = session.scalars(_active(client_id, now or utcnow()).limit(1)).first()
        return _block(row) if row is not None else None


def list_blocks(engine: Engine, *, now: datetime | None = None) -> list[Block]:
    """Every active block, newest first, one per client."""
    with session_factory(engine)() as session:
        rows = [_block(r) for r in session.scalars(_active(None, now or utcnow()))]
    seen: set[int] = set()
    out = []
    for b in rows:
        if b.client_id not in seen:
            seen.add(b.client_id)
            out.append(b)
    return out


_BLOCK_LOCK_SPACE = 0x62737462  # "bstb": the advisory-lock namespace of client blocks


def _lock_blocks(session: Session, client_id: int) -> None:
    """Serialise block changes of one client until the transaction ends, so that concurrent
    verdicts (threads, processes, replicas) make one block: an advisory lock on PostgreSQL
    (per client), the database's write lock on SQLite (a write that changes nothing takes
    it at once, before the read of the blocks in force)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text("SELECT pg_advisory_xact_lock(:space, :cid)"),
            {"space": _BLOCK_LOCK_SPACE, "cid": client_id},
        )
    else:
        sqlite_write_lock(session, "client_blocks")


def block_client(
    engine: Engine,
    client_id: int,
    *,
    reasons: list[str],
    created_by: str,
    request_id: str | None = None,
    expires: datetime | None = None,
    replace: bool = False,
    now: datetime | None = None,
) -> tuple[Block, bool]:
    """Block ``client_id``; returns ``(block, created)``.

    When the client is already blocked the existing block is kept and returned with
    ``created`` False (the guard's verdicts on concurrent requests make one block), unless
    ``replace``: then the old block is removed (``removed_by`` says by whom) and a new one
    made."""
    now = now or utcnow()
    if not storable(engine, client_id):
        raise UnknownClient(f"no API key with id {client_id}: see `bastion keys list`")
    if expires is not None and expires <= now:
        raise StoreError(f"a block must expire after it is made (expires {expires.isoformat()})")
    with session_factory(engine)() as session, session.begin():
        _lock_blocks(session, client_id)
        current = list(session.scalars(_active(client_id, now)))
        if current and not replace:
            return _block(current[0]), False
        for row in current:
            row.removed, row.removed_by = now, f"replaced by {created_by}"
        row = ClientBlock(
            client_key_id=client_id,
            reasons_json=json.dumps(list(reasons)),
            request_id=request_id,
            created=now,
            expires=expires,
            created_by=created_by,
        )
        session.add(row)
        session.flush()
        block = _block(row)
    return block, True


def unblock_client(
    engine: Engine, client_id: int, *, removed_by: str, now: datetime | None = None
) -> Block:
    """Remove the client's active block; returns it (with ``removed`` set). Raises
    :class:`NotBlocked` when there is none (an expired block counts as none)."""
    now = now or utcnow()
    if not storable(engine, client_id):
        raise NotBlocked(f"client {client_id} is not blocked")
    with session_factory(engine)() as session, session.begin():
        rows = list(session.scalars(_active(client_id, now)))
        if not rows:
            raise NotBlocked(f"client {client_id} is not blocked")
        for row in rows:
            row.removed, row.removed_by = now, removed_by
        session.flush()
        return _block(rows[0])
