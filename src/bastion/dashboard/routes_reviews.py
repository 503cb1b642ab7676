"""The review queue (``/reviews``): each held request with its samples rendered, the guard's
scores and reasons and the client's name, approve / reject with a comment; the decided
reviews with who and when. Reviewer or admin; decisions go through the gateway's
:class:`~bastion.serve.reviews.ReviewQueue` (audited before they are acknowledged)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bastion.dashboard.inputs import RenderedSample, render_sample
from bastion.dashboard.render import error_page, page
from bastion.dashboard.session import DashboardUser, Viewer, checked_form, key_of
from bastion.serve.params import TicketPath
from bastion.serve.reviews import TicketConflict, TicketNotFound
from bastion.serve.validation import RequestSpec
from bastion.store import keys as keystore
from bastion.store.review_inputs import get_inputs
from bastion.store.reviews import Ticket

router = APIRouter(include_in_schema=False)
HELD_SHOWN = 50
DECIDED_SHOWN = 50
MAX_SAMPLES_SHOWN = 8
MAX_COMMENT = 2000
MAX_TURNS_SHOWN = 12  # the conversation's last turns, for a held chat request
MAX_CHAT_CHARS = 4000
DONE = {"approved": "approved", "rejected": "rejected"}


@dataclass(frozen=True)
class SampleView:
    index: int
    verdict: str
    scores: list[tuple[str, float]]
    reasons: list[str]
    prediction: int | None
    rendered: RenderedSample | None


@dataclass(frozen=True)
class ChatTurn:
    role: str
    text: str


@dataclass(frozen=True)
class ChatView:
    """A held chat request of the LLM firewall: the conversation as sent, and the
    upstream's answer the firewall kept (or why its output rules blocked it)."""

    turns: list[ChatTurn]
    answer: str | None
    tool_calls: list[str]
    blocked_reason: str | None


def _text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "" if content is None else str(content)


def chat_view(result: dict) -> ChatView | None:
    """The chat of a firewall ticket's stored result (None for a model's held batch)."""
    prompt = result.get("prompt")
    if not isinstance(prompt, list):
        return None
    turns = [
        ChatTurn(str(m.get("role", "?")), _text(m.get("content"))[:MAX_CHAT_CHARS])
        for m in prompt[-MAX_TURNS_SHOWN:]
        if isinstance(m, dict)
    ]
    answer, calls = None, []
    completion = result.get("completion")
    if isinstance(completion, dict) and completion.get("choices"):
        message = (completion["choices"][0] or {}).get("message") or {}
        answer = _text(message.get("content"))[:MAX_CHAT_CHARS]
        calls = [
            str((c.get("function") or {}).get("name", "?"))
            for c in message.get("tool_calls") or []
            if isinstance(c, dict)
        ]
    return ChatView(turns, answer, calls, result.get("blocked_reason"))


@dataclass(frozen=True)
class TicketCard:
    id: str
    request_id: str
    status: str
    created: datetime
    client: str
    client_id: int
    n_samples: int
    escalated: bool
    samples: list[SampleView]
    decided: datetime | None
    reviewer: str
    note: str
    chat: ChatView | None = None


def _name(names: dict[int, str], key_id: int | None) -> str:
    if key_id is None:
        return "—"
    return names.get(key_id) or f"key {key_id}"


def _card(
    ticket: Ticket, names: dict[int, str], x: np.ndarray | None, spec: RequestSpec | None
) -> TicketCard:
    predictions = (ticket.result or {}).get("predictions") or []
    samples = []
    for i, v in enumerate(ticket.verdicts[:MAX_SAMPLES_SHOWN]):
        shown = x is not None and spec is not None and i < len(x)
        rendered = render_sample(x[i], spec) if shown else None  # no spec: no model served
        samples.append(
            SampleView(
                index=i,
                verdict=v.get("verdict", "allow"),
                scores=sorted((v.get("scores") or {}).items()),
                reasons=list(v.get("reasons") or []),
                prediction=predictions[i] if i < len(predictions) else None,
                rendered=rendered,
            )
        )
    return TicketCard(
        id=ticket.id,
        request_id=ticket.request_id,
        status=ticket.status,
        created=ticket.created,
        client=_name(names, ticket.client_key_id),
        client_id=ticket.client_key_id,
        n_samples=ticket.n_samples,
        escalated=ticket.escalated is not None,
        samples=samples,
        decided=ticket.decided,
        reviewer=_name(names, ticket.reviewer_key_id),
        note=ticket.note,
        chat=chat_view(ticket.result or {}),
    )


@router.get("/reviews", response_class=HTMLResponse)
async def reviews(request: Request, user: Viewer, done: str = "") -> HTMLResponse:
    state = request.app.state
    queue = state.reviews
    held = await queue.list("held", HELD_SHOWN)
    decided = sorted(
        await queue.list("approved", DECIDED_SHOWN) + await queue.list("rejected", DECIDED_SHOWN),
        key=lambda t: t.decided or t.created,
        reverse=True,
    )[:DECIDED_SHOWN]

    def load() -> tuple[dict[int, str], dict[str, np.ndarray | None]]:
        names = {k.id: k.name for k in keystore.list_keys(state.engine)}
        return names, {t.id: get_inputs(state.engine, t.id) for t in held}

    names, inputs = await anyio.to_thread.run_sync(load)
    spec = getattr(state, "input_spec", None)
    return page(
        request,
        "reviews.html.j2",
        user=user,
        held=[_card(t, names, inputs[t.id], spec) for t in held],
        decided=[_card(t, names, None, spec) for t in decided],
        done=DONE.get(done, ""),
        escalate_after_s=state.settings.reviews.escalate_after_s,
    )


def _error(request: Request, user: DashboardUser, status_code: int, detail: str) -> HTMLResponse:
    return error_page(request, user, status_code, "Review", detail)


@router.post("/reviews/{ticket}/decide", response_class=HTMLResponse)
async def decide(request: Request, ticket: TicketPath, user: Viewer) -> Response:
    form = await checked_form(request, user)
    action = form.get("action", "")
    if action not in ("approve", "reject"):
        return _error(request, user, 400, "choose approve or reject")
    comment = form.get("comment", "").strip()
    if len(comment) > MAX_COMMENT:
        return _error(request, user, 400, f"the comment is longer than {MAX_COMMENT} characters")
    reviewer = await key_of(request, user)
    try:
        decided = await request.app.state.reviews.decide(
            ticket, approve=action == "approve", reviewer=reviewer, note=comment
        )
    except TicketNotFound:
        return _error(request, user, 404, f"no ticket {ticket}")
    except TicketConflict as exc:
        return _error(request, user, 409, str(exc))
    return RedirectResponse(f"/reviews?done={decided.status}#decided", status_code=303)
