"""The human review queue: one row per held request (a ticket).

A held request's answer is computed and kept here, withheld until a reviewer approves
it; a rejection discards it. ``escalated`` is set when a hold waits past the configured
limit. Status moves only ``held → approved | rejected``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Integer, String, Text, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from bastion.errors import StoreError
from bastion.store.db import Base, session_factory, sqlite_write_lock
from bastion.store.types import UTCDateTime, check_text

STATUSES = ("held", "approved", "rejected")


class Review(Base):
    __tablename__ = "reviews"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    created: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True, default="held")
    client_key_id: Mapped[int] = mapped_column(Integer)
    request_id: Mapped[str] = mapped_column(String(64))
    n_samples: Mapped[int] = mapped_column(Integer)
    verdicts_json: Mapped[str] = mapped_column(Text)
    result_json: Mapped[str | None] = mapped_column(Text, nullable=True)
    escalated: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    decided: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    reviewer_key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    note: Mapped[str] = mapped_column(Text, default="")


@dataclass(frozen=True)
class Ticket:
    """A review record as routes and the dashboard see it."""

    id: str
    created: datetime
    status: str
    client_key_id: int
    request_id: str
    n_samples: int
    verdicts: list[dict[str, Any]]
    result: dict[str, Any] | None = field(default=None, repr=False)
    escalated: datetime | None = None
    decided: datetime | None = None
    reviewer_key_id: int | None = None
    note: str = ""


def _aware(t: datetime | None) -> datetime | None:
    # SQLite drops the zone on the way back: every stored time is UTC.
    return t.replace(tzinfo=UTC) if t is not None and t.tzinfo is None else t


def _ticket(row: Review) -> Ticket:
    return Ticket(
        id=row.id,
        created=_aware(row.created),
        status=row.status,
        client_key_id=row.client_key_id,
        request_id=row.request_id,
        n_samples=row.n_samples,
        verdicts=json.loads(row.verdicts_json),
        result=json.loads(row.result_json) if row.result_json else None,
        escalated=_aware(row.escalated),
        decided=_aware(row.decided),
        reviewer_key_id=row.reviewer_key_id,
        note=row.note,
    )


def create_ticket(
    engine: Engine,
    *,
    client_key_id: int,
    request_id: str,
    n_samples: int,
    verdicts: list[dict[str, Any]],
    result: dict[str, Any],
) -> Ticket:
    """Store a held request with its withheld answer; returns the ticket."""
    row = Review(
        id=uuid.uuid4().hex,
        created=datetime.now(UTC),
        status="held",
        client_key_id=client_key_id,
        request_id=request_id,
        n_samples=n_samples,
        verdicts_json=json.dumps(verdicts),
        result_json=json.dumps(result),
        note="",
    )
    with session_factory(engine)() as session, session.begin():
        session.add(row)
        session.flush()
        ticket = _ticket(row)
    return ticket


def get_ticket(engine: Engine, ticket_id: str) -> Ticket | None:
    with session_factory(engine)() as session:
        row = session.get(Review, ticket_id)
        return _ticket(row) if row is not None else None


def list_tickets(engine: Engine, *, status: str | None = "held", limit: int = 100) -> list[Ticket]:
    """Tickets newest first, optionally of one status."""
    query = select(Review).order_by(Review.created.desc()).limit(limit)
    if status is not None:
        query = query.where(Review.status == status)
    with session_factory(engine)() as session:
        return [_ticket(r) for r in session.scalars(query)]


def decide_ticket(
    engine: Engine, ticket_id: str, *, approve: bool, reviewer_key_id: int, note: str = ""
) -> Ticket:
    """Approve or reject a held ticket. Deciding twice raises StoreError (409 at the API);
    a rejection drops the withheld answer."""
    status = "approved" if approve else "rejected"
    check_text(note, "review note")
    with session_factory(engine)() as session, session.begin():
        values: dict[str, Any] = {
            "status": status,
            "decided": datetime.now(UTC),
            "reviewer_key_id": reviewer_key_id,
            "note": note,
        }
        if not approve:
            values["result_json"] = None
        # Conditional update: of two reviewers racing, exactly one wins.
        done = session.execute(
            update(Review).where(Review.id == ticket_id, Review.status == "held").values(**values)
        ).rowcount
        row = session.get(Review, ticket_id)
        if row is None:
            raise StoreError(f"no ticket {ticket_id}")
        if not done:
            raise StoreError(f"ticket {ticket_id} was already {row.status}")
        session.refresh(row)
        ticket = _ticket(row)
    return ticket


def escalate_overdue(engine: Engine, *, older_than_s: float) -> list[Ticket]:
    """Mark held tickets waiting longer than ``older_than_s`` as escalated (once each);
    returns the newly escalated ones."""
    now = datetime.now(UTC)
    cutoff = now - timedelta(seconds=older_than_s)
    with session_factory(engine)() as session, session.begin():
        sqlite_write_lock(session, "reviews")
        rows = list(
            session.scalars(
                select(Review)
                .where(
                    Review.status == "held", Review.escalated.is_(None), Review.created <= cutoff
                )
                # replicas checking at once: each overdue ticket is escalated by one of them
                # (PostgreSQL row locks; SQLite's write lock serialises the whole check)
                .with_for_update(skip_locked=True)
            )
        )
        for row in rows:
            row.escalated = now
        session.flush()
        return [_ticket(r) for r in rows]


def count_held(engine: Engine) -> int:
    with session_factory(engine)() as session:
        return int(session.scalar(select(func.count()).where(Review.status == "held")) or 0)
