"""Dashboard login sessions, kept server-side.

A session is made when a reviewer or admin logs in with an API key. The browser holds only
a random session token (256 bits) in an HttpOnly cookie; the store keeps its SHA-256
digest (never the token, never the API key), the key's id, name and role, the session's
CSRF token and its times. A session ends at logout, after ``idle_s`` without a request,
``max_s`` after login, or as soon as its key is revoked (checked by the caller).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, Integer, String, delete, or_
from sqlalchemy.orm import Mapped, mapped_column

from bastion.store.db import Base, session_factory
from bastion.store.keys import KeyInfo
from bastion.store.types import UTCDateTime


class DashboardSession(Base):
    __tablename__ = "dashboard_sessions"

    token_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer, index=True)
    key_name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    csrf: Mapped[str] = mapped_column(String(64))
    created: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime())
    expires: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


@dataclass(frozen=True)
class SessionRecord:
    """A live session as the dashboard sees it (the token itself is not kept)."""

    key_id: int
    key_name: str
    role: str
    csrf: str
    created: datetime
    last_seen: datetime
    expires: datetime


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def _aware(t: datetime) -> datetime:
    # SQLite drops the zone on the way back: every stored time is UTC.
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t


def _record(row: DashboardSession) -> SessionRecord:
    return SessionRecord(
        key_id=row.key_id,
        key_name=row.key_name,
        role=row.role,
        csrf=row.csrf,
        created=_aware(row.created),
        last_seen=_aware(row.last_seen),
        expires=_aware(row.expires),
    )


def create_session(
    engine: Engine, key: KeyInfo, *, max_s: float, now: datetime | None = None
) -> tuple[str, SessionRecord]:
    """Open a session for ``key``; returns the token (for the cookie) and the record."""
    now = now or datetime.now(UTC)
    token = secrets.token_urlsafe(32)
    row = DashboardSession(
        token_sha256=_digest(token),
        key_id=key.id,
        key_name=key.name,
        role=key.role,
        csrf=secrets.token_urlsafe(32),
        created=now,
        last_seen=now,
        expires=now + timedelta(seconds=max_s),
    )
    with session_factory(engine)() as s, s.begin():
        s.add(row)
        s.flush()
        record = _record(row)
    return token, record


def get_session(
    engine: Engine, token: str, *, idle_s: float, now: datetime | None = None
) -> SessionRecord | None:
    """The live session of ``token`` (its last use moved to now), or None when unknown,
    past ``expires`` or idle for longer than ``idle_s`` (an expired one is deleted)."""
    if not token or len(token) > 128:
        return None
    now = now or datetime.now(UTC)
    digest = _digest(token)
    with session_factory(engine)() as s, s.begin():
        row = s.get(DashboardSession, digest)
        if row is None or not hmac.compare_digest(row.token_sha256, digest):
            return None
        if _aware(row.expires) <= now or _aware(row.last_seen) + timedelta(seconds=idle_s) <= now:
            s.delete(row)
            return None
        row.last_seen = now
        s.flush()
        return _record(row)


def delete_session(engine: Engine, token: str) -> bool:
    """End the session of ``token``; False when there was none."""
    with session_factory(engine)() as s, s.begin():
        done = s.execute(
            delete(DashboardSession).where(DashboardSession.token_sha256 == _digest(token))
        ).rowcount
    return bool(done)


def purge_expired(engine: Engine, *, idle_s: float, now: datetime | None = None) -> int:
    """Delete every session past its expiry or idle limit; returns how many."""
    now = now or datetime.now(UTC)
    idle_cutoff = now - timedelta(seconds=idle_s)
    with session_factory(engine)() as s, s.begin():
        done = s.execute(
            delete(DashboardSession).where(
                or_(DashboardSession.expires <= now, DashboardSession.last_seen <= idle_cutoff)
            )
        ).rowcount
    return int(done or 0)
