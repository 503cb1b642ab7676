"""The human review queue as the gateway uses it: hold a request, let a reviewer decide,
escalate holds that wait too long. Every decision and escalation goes to the audit log
before it is acknowledged."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any, Literal

import anyio.to_thread
import numpy as np
from pydantic import BaseModel, Field
from sqlalchemy import Engine

from bastion.errors import StoreError
from bastion.guard.verdict import GuardVerdict
from bastion.serve.audit_adapter import AuditSink
from bastion.serve.metrics import ServeMetrics
from bastion.serve.output import LabelScore
from bastion.store import reviews as store
from bastion.store.keys import KeyInfo
from bastion.store.review_inputs import save_inputs
from bastion.store.reviews import Ticket

log = logging.getLogger(__name__)


class TicketNotFound(LookupError):
    pass


class TicketConflict(RuntimeError):
    pass


class ReviewQueue:
    def __init__(
        self, engine: Engine, metrics: ServeMetrics, audit: AuditSink, *, escalate_after_s: float
    ) -> None:
        self.engine = engine
        self.metrics = metrics
        self.audit = audit
        self.escalate_after_s = escalate_after_s

    async def hold(
        self,
        *,
        key: KeyInfo,
        request_id: str,
        verdicts: list[GuardVerdict],
        result: HeldResult,
        inputs: np.ndarray | None = None,
    ) -> Ticket:
        """Store the ticket (and ``inputs``, the held batch, for the dashboard)."""

        def create() -> Ticket:
            ticket = store.create_ticket(
                self.engine,
                client_key_id=key.id,
                request_id=request_id,
                n_samples=len(verdicts),
                verdicts=[v.model_dump() for v in verdicts],
                result=result.model_dump(),
            )
            if inputs is not None:
                save_inputs(self.engine, ticket.id, inputs)
            return ticket

        ticket = await anyio.to_thread.run_sync(create)
        self.metrics.held.inc()
        self.metrics.pending_holds.inc()
        return ticket

    async def get(self, ticket_id: str) -> Ticket:
        ticket = await anyio.to_thread.run_sync(store.get_ticket, self.engine, ticket_id)
        if ticket is None:
            raise TicketNotFound(ticket_id)
        return ticket

    async def list(self, status: str | None, limit: int) -> list[Ticket]:
        return await anyio.to_thread.run_sync(
            lambda: store.list_tickets(self.engine, status=status, limit=limit)
        )

    async def decide(
        self, ticket_id: str, *, approve: bool, reviewer: KeyInfo, note: str
    ) -> Ticket:
        await self.get(ticket_id)  # 404 before 409
        try:
            ticket = await anyio.to_thread.run_sync(
                lambda: store.decide_ticket(
                    self.engine, ticket_id, approve=approve, reviewer_key_id=reviewer.id, note=note
                )
            )
        except StoreError as exc:
            raise TicketConflict(str(exc)) from None
        self.metrics.pending_holds.dec()
        await self.audit.submit(
            {
                "kind": "review",
                "ticket": ticket.id,
                "request_id": ticket.request_id,
                "action": ticket.status,
                "reviewer_key_id": reviewer.id,
                "client_key_id": ticket.client_key_id,
                "note": note,
            }
        )
        log.info("ticket %s %s by key %d", ticket.id, ticket.status, reviewer.id)
        return ticket

    async def escalate_overdue(self) -> list[Ticket]:
        """Escalate holds older than the limit (each once): log, count, audit."""
        overdue = await anyio.to_thread.run_sync(
            lambda: store.escalate_overdue(self.engine, older_than_s=self.escalate_after_s)
        )
        for ticket in overdue:
            log.warning(
                "ticket %s held for more than %.0f s without review: escalated",
                ticket.id,
                self.escalate_after_s,
            )
            self.metrics.escalated.inc()
            await self.audit.submit(
                {
                    "kind": "escalation",
                    "ticket": ticket.id,
                    "request_id": ticket.request_id,
                    "client_key_id": ticket.client_key_id,
                    "after_s": self.escalate_after_s,
                }
            )
        pending = await anyio.to_thread.run_sync(store.count_held, self.engine)
        self.metrics.pending_holds.set(pending)
        return overdue

    async def run_escalation(self, every_s: float) -> None:
        """Background loop (started in the app's lifespan)."""
        while True:
            try:
                await self.escalate_overdue()
            except asyncio.CancelledError:
                raise
            except Exception:  # keep the loop alive; the failure is logged
                log.exception("hold escalation check failed")
            await asyncio.sleep(every_s)


class HeldResult(BaseModel):
    """The answer of a held request, withheld until a reviewer approves it."""

    predictions: list[int]
    probabilities: list[list[float]] | None = None  # as the output policy allows
    top_k: list[list[LabelScore]] | None = None
    verdicts: list[Literal["allow", "flag", "hold", "block"]]


class TicketView(BaseModel):
    """A ticket as its client sees it: the answer only once approved.

    Fields that do not apply (the answer while held, ``detail`` unless rejected) are left
    out of the JSON, not sent as null."""

    ticket: str
    status: Literal["held", "approved", "rejected"]
    request_id: str
    created: datetime
    n_samples: int
    escalated: bool
    decided: datetime | None
    predictions: list[int] | None = None
    probabilities: list[list[float]] | None = None
    top_k: list[list[LabelScore]] | None = None
    verdicts: list[Literal["allow", "flag", "hold", "block"]] | None = None
    detail: str | None = Field(None, description="why there is no answer (rejected)")


class TicketDetail(BaseModel):
    """A ticket as reviewers see it: the guard's verdicts and the withheld answer (left
    out once a rejection discarded it)."""

    ticket: str
    status: Literal["held", "approved", "rejected"]
    request_id: str
    created: datetime
    n_samples: int
    escalated: bool
    decided: datetime | None
    client_key_id: int
    verdicts: list[GuardVerdict]
    note: str
    reviewer_key_id: int | None
    result: HeldResult | None = None


def _common(ticket: Ticket) -> dict[str, Any]:
    return {
        "ticket": ticket.id,
        "status": ticket.status,
        "request_id": ticket.request_id,
        "created": ticket.created,
        "n_samples": ticket.n_samples,
        "escalated": ticket.escalated is not None,
        "decided": ticket.decided,
    }


def ticket_view(ticket: Ticket) -> TicketView:
    """A ticket for its client; the answer appears once approved. Serialise it with
    ``exclude_unset`` so absent fields stay absent."""
    view = TicketView(**_common(ticket))
    if ticket.status == "approved" and ticket.result is not None:
        result = HeldResult.model_validate(ticket.result)
        view = TicketView(**_common(ticket), **result.model_dump(exclude_none=True))
    elif ticket.status == "rejected":
        view = TicketView(**_common(ticket), detail="a reviewer rejected this request")
    return view


def ticket_detail(ticket: Ticket) -> TicketDetail:
    """A ticket for reviewers: the guard's scores and reasons and the withheld answer."""
    extra: dict[str, Any] = {}
    if ticket.result is not None:
        extra["result"] = HeldResult.model_validate(ticket.result)
    return TicketDetail(
        **_common(ticket),
        client_key_id=ticket.client_key_id,
        verdicts=[GuardVerdict.model_validate(v) for v in ticket.verdicts],
        note=ticket.note,
        reviewer_key_id=ticket.reviewer_key_id,
        **extra,
    )
