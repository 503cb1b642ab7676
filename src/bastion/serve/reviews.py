"""The human review queue as the gateway uses it: hold a request, let a reviewer decide,
escalate holds that wait too long. Every decision and escalation goes to the audit log
before it is acknowledged."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import anyio.to_thread
from sqlalchemy import Engine

from bastion.errors import StoreError
from bastion.serve.audit_adapter import AuditSink
from bastion.serve.metrics import ServeMetrics
from bastion.store import reviews as store
from bastion.store.keys import KeyInfo
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
        self, *, key: KeyInfo, request_id: str, verdicts: list[dict[str, Any]],
        result: dict[str, Any],
    ) -> Ticket:  # fmt: skip
        def create() -> Ticket:
            return store.create_ticket(
                self.engine, client_key_id=key.id, request_id=request_id,
                n_samples=len(verdicts), verdicts=verdicts, result=result,
            )  # fmt: skip

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
        await self.audit.submit({
            "kind": "review", "ticket": ticket.id, "request_id": ticket.request_id,
            "action": ticket.status, "reviewer_key_id": reviewer.id,
            "client_key_id": ticket.client_key_id, "note": note,
        })  # fmt: skip
        log.info("ticket %s %s by key %d", ticket.id, ticket.status, reviewer.id)
        return ticket

    async def escalate_overdue(self) -> list[Ticket]:
        """Escalate holds older than the limit (each once): log, count, audit."""
        overdue = await anyio.to_thread.run_sync(
            lambda: store.escalate_overdue(self.engine, older_than_s=self.escalate_after_s)
        )
        for ticket in overdue:
            log.warning("ticket %s held for more than %.0f s without review: escalated",
                        ticket.id, self.escalate_after_s)  # fmt: skip
            self.metrics.escalated.inc()
            await self.audit.submit({
                "kind": "escalation", "ticket": ticket.id, "request_id": ticket.request_id,
                "client_key_id": ticket.client_key_id, "after_s": self.escalate_after_s,
            })  # fmt: skip
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


def ticket_view(ticket: Ticket, *, detail: bool = False) -> dict[str, Any]:
    """A ticket as JSON. ``detail`` adds the guard's scores and reasons and the withheld
    answer (for reviewers); clients see the answer only once approved."""
    view: dict[str, Any] = {
        "ticket": ticket.id, "status": ticket.status, "request_id": ticket.request_id,
        "created": ticket.created.isoformat(), "n_samples": ticket.n_samples,
        "escalated": ticket.escalated is not None,
        "decided": ticket.decided.isoformat() if ticket.decided else None,
    }  # fmt: skip
    if detail:
        view["client_key_id"] = ticket.client_key_id
        view["verdicts"] = ticket.verdicts
        view["note"] = ticket.note
        view["reviewer_key_id"] = ticket.reviewer_key_id
        if ticket.result is not None:
            view["result"] = ticket.result
    elif ticket.status == "approved" and ticket.result is not None:
        view.update(ticket.result)
    elif ticket.status == "rejected":
        view["detail"] = "a reviewer rejected this request"
    return view
