"""API keys for the gateway: stored as SHA-256 digests, never in clear.

A key is ``bst_`` followed by 43 random url-safe characters (256 bits from :mod:`secrets`); only
its SHA-256 digest and a short display prefix are stored. A high-entropy secret needs no
slow password hash; the lookup goes by digest and the digest is compared again with
:func:`hmac.compare_digest`. The plaintext is shown once, when the key is created.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, Integer, String, select
from sqlalchemy.orm import Mapped, mapped_column

from bastion.errors import ConfigError, StoreError
from bastion.store.db import Base, session_factory
from bastion.store.ids import storable
from bastion.store.types import UTCDateTime, check_text

ROLES = ("client", "reviewer", "admin")
KEY_PREFIX = "bst_"


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), default="")
    role: Mapped[str] = mapped_column(String(16))
    key_sha256: Mapped[str] = mapped_column(String(64), unique=True, index=True)
    prefix: Mapped[str] = mapped_column(String(16))
    created: Mapped[datetime] = mapped_column(UTCDateTime(), default=lambda: datetime.now(UTC))
    revoked: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


@dataclass(frozen=True)
class KeyInfo:
    """What a route learns about the caller: never the secret."""

    id: int
    name: str
    role: str
    prefix: str
    created: datetime
    revoked: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked is None


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


def _aware(t: datetime | None) -> datetime | None:
    # SQLite drops the zone on the way back: every stored time is UTC.
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _info(row: ApiKey) -> KeyInfo:
    return KeyInfo(row.id, row.name, row.role, row.prefix, _aware(row.created), _aware(row.revoked))


def check_role(role: str) -> str:
    if role not in ROLES:
        raise ConfigError(f"unknown role {role!r}: choose one of {', '.join(ROLES)}")
    return role


def create_key(engine: Engine, role: str, name: str = "") -> tuple[KeyInfo, str]:
    """Create a key; returns its record and the plaintext (the only time it exists)."""
    check_role(role)
    check_text(name, "key name", max_len=128)
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_factory(engine)() as session, session.begin():
        row = ApiKey(name=name, role=role, key_sha256=hash_key(secret), prefix=secret[:10])
        session.add(row)
        session.flush()
        info = _info(row)
    return info, secret


def revoke_key(engine: Engine, key_id: int) -> KeyInfo:
    """Mark a key revoked (idempotent); unknown ids (and ids the store cannot hold) raise
    StoreError."""
    with session_factory(engine)() as session, session.begin():
        row = session.get(ApiKey, key_id) if storable(engine, key_id) else None
        if row is None:
            raise StoreError(f"no API key with id {key_id}: see `bastion keys list`")
        if row.revoked is None:
            row.revoked = datetime.now(UTC)
        info = _info(row)
    return info


def list_keys(engine: Engine) -> list[KeyInfo]:
    with session_factory(engine)() as session:
        return [_info(r) for r in session.scalars(select(ApiKey).order_by(ApiKey.id))]


def lookup_key(engine: Engine, key: str) -> KeyInfo | None:
    """The record of a presented key (revoked ones included), or None when unknown."""
    if not key.startswith(KEY_PREFIX) or len(key) > 128:
        return None
    digest = hash_key(key)
    with session_factory(engine)() as session:
        row = session.scalars(select(ApiKey).where(ApiKey.key_sha256 == digest)).first()
        if row is None or not hmac.compare_digest(row.key_sha256, digest):
            return None
        return _info(row)
