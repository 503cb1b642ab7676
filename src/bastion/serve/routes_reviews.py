"""The review queue (reviewers) and ticket polling (the client that sent the request).

* ``GET /v1/reviews?status=held`` — tickets, newest first (reviewer or admin);
* ``GET /v1/reviews/{ticket}`` — one ticket with the guard's scores and the withheld answer;
* ``POST /v1/reviews/{ticket}/approve`` and ``/reject`` — decide (409 if already decided);
* ``GET /v1/tickets/{ticket}`` — the client polls: ``held`` until a reviewer decides, then
  ``approved`` with the predictions, or ``rejected``. Another client's ticket is 404.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, HTTPException, Query, Request, status
from pydantic import BaseModel, Field

from bastion.serve.auth import ReviewerKey
from bastion.serve.deps import AUTH_ERRORS, LimitedAnyKey
from bastion.serve.errors import error_responses
from bastion.serve.params import PageLimit, TicketPath
from bastion.serve.reviews import (
    TicketConflict,
    TicketDetail,
    TicketNotFound,
    TicketView,
    ticket_detail,
    ticket_view,
)
from bastion.store.keys import KeyInfo
from bastion.store.reviews import Ticket

router = APIRouter(prefix="/v1", tags=["reviews"])


class Decision(BaseModel):
    note: str = Field("", max_length=2000, pattern=r"^[^\x00]*$")  # no NUL: PostgreSQL


def _not_found(ticket: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no ticket {ticket}")


@router.get(
    "/reviews",
    response_model=list[TicketDetail],
    response_model_exclude_unset=True,
    responses=error_responses(*AUTH_ERRORS, 422),
)
async def list_reviews(
    request: Request,
    _key: ReviewerKey,
    status_: Annotated[
        Literal["held", "approved", "rejected", "all"], Query(alias="status")
    ] = "held",
    limit: PageLimit = 100,
) -> list[TicketDetail]:
    """Tickets of one status (or all), newest first."""
    tickets = await request.app.state.reviews.list(None if status_ == "all" else status_, limit)
    return [ticket_detail(t) for t in tickets]


@router.get(
    "/reviews/{ticket}",
    response_model=TicketDetail,
    response_model_exclude_unset=True,
    responses=error_responses(*AUTH_ERRORS, 404, 422),
)
async def get_review(request: Request, ticket: TicketPath, _key: ReviewerKey) -> TicketDetail:
    try:
        found = await request.app.state.reviews.get(ticket)
    except TicketNotFound:
        raise _not_found(ticket) from None
    return ticket_detail(found)


async def _decide(
    request: Request, ticket: str, key: KeyInfo, note: str, approve: bool
) -> TicketDetail:
    try:
        decided = await request.app.state.reviews.decide(
            ticket, approve=approve, reviewer=key, note=note
        )
    except TicketNotFound:
        raise _not_found(ticket) from None
    except TicketConflict as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
    return ticket_detail(decided)


_DECIDE = error_responses(400, *AUTH_ERRORS, 404, 409, 422, describe={409: "already decided"})


@router.post(
    "/reviews/{ticket}/approve",
    response_model=TicketDetail,
    response_model_exclude_unset=True,
    responses=_DECIDE,
)
async def approve(
    request: Request,
    ticket: TicketPath,
    key: ReviewerKey,
    decision: Annotated[Decision | None, Body()] = None,
) -> TicketDetail:
    """Release the held answer to the client."""
    return await _decide(request, ticket, key, (decision or Decision()).note, True)


@router.post(
    "/reviews/{ticket}/reject",
    response_model=TicketDetail,
    response_model_exclude_unset=True,
    responses=_DECIDE,
)
async def reject(
    request: Request,
    ticket: TicketPath,
    key: ReviewerKey,
    decision: Annotated[Decision | None, Body()] = None,
) -> TicketDetail:
    """Refuse the request; its answer is discarded."""
    return await _decide(request, ticket, key, (decision or Decision()).note, False)


@router.get(
    "/tickets/{ticket}",
    tags=["predict"],
    response_model=TicketView,
    response_model_exclude_unset=True,
    responses=error_responses(*AUTH_ERRORS, 404, 422, 429, 503, blocked=True),
)
async def poll_ticket(request: Request, ticket: TicketPath, key: LimitedAnyKey) -> TicketView:
    """A held request's state; once approved, its predictions."""
    return ticket_view(await visible_ticket(request, ticket, key))


async def visible_ticket(request: Request, ticket: str, key: KeyInfo) -> Ticket:
    """The ticket as ``key`` may see it: a client only its own (another's is 404, as a
    missing one), a reviewer or admin any."""
    try:
        found = await request.app.state.reviews.get(ticket)
    except TicketNotFound:
        raise _not_found(ticket) from None
    if key.role == "client" and found.client_key_id != key.id:
        raise _not_found(ticket)
    return found
