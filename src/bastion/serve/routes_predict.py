"""``POST /v1/predict``: validate, rate-limit samples, run model + guard, audit, answer.

A request whose verdict is ``hold`` answers 202 with a ticket (its answer is kept for the
reviewer); ``block`` answers 403 and blocks the client (``blocks.expire_after_s``): its
later requests are refused with 403 until an admin removes the block or it lapses (see
:mod:`bastion.serve.deps`); ``allow`` and ``flag`` answer 200. In every case the audit
entry is durable before the answer leaves; a block's reasons are in it.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from bastion.guard.verdict import GuardVerdict
from bastion.serve.deps import AUTH_ERRORS, LimitedClient, model_response, refusal, take
from bastion.serve.errors import error_responses
from bastion.serve.output import LabelScore, police
from bastion.serve.reviews import HeldResult, TicketView, ticket_view
from bastion.serve.validation import check_content_type, parse_predict_body

router = APIRouter(prefix="/v1", tags=["predict"])


class PredictRequest(BaseModel):
    """Either ``inputs`` (nested arrays, one per sample, each of the model's sample shape)
    or ``b64`` + ``shape`` (base64 of little-endian float32, shape ``[n, c, h, w]``).

    The generic form; once the model is loaded the OpenAPI document publishes the body
    typed by its input spec (:mod:`bastion.serve.body_schema`)."""

    inputs: list[Any] | None = None
    b64: str | None = None
    shape: list[int] | None = None


class PredictResponse(BaseModel):
    """``probabilities`` (every class) or ``top_k`` (the most likely classes) as the
    gateway's output policy allows; neither under ``output.mode: labels``."""

    predictions: list[int]
    probabilities: list[list[float]] | None = None
    top_k: list[list[LabelScore]] | None = None
    verdicts: list[Literal["allow", "flag"]]
    request_id: str


class HeldResponse(TicketView):
    poll: str = Field(description="GET this URL (with your key) until status is not 'held'")


class DecisionView(BaseModel):
    """One decision as the dashboard's "recent decisions" list keeps it (in memory)."""

    ts: float
    request_id: str
    key_id: int
    n: int
    verdict: Literal["allow", "flag", "hold", "block"]
    predictions: list[int]
    latency_ms: float
    ticket: str | None = None
    blocked: bool = False
    audit_index: int


_TICKET = {"ticket": "$response.body#/ticket"}
_HELD_LINKS = {
    "PollTicket": {"operationId": "poll_ticket", "parameters": _TICKET},
    "GetReview": {"operationId": "get_review", "parameters": _TICKET},
    "Approve": {"operationId": "approve", "parameters": _TICKET},
    "Reject": {"operationId": "reject", "parameters": _TICKET},
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": HeldResponse, "description": "held for human review", "links": _HELD_LINKS},
    **error_responses(
        400,
        *AUTH_ERRORS,
        413,
        415,
        422,
        429,
        503,
        blocked=True,
        describe={403: "the key's role may not predict, or the guard blocked the request"},
    ),
}
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


def block_reasons(verdicts: list[GuardVerdict]) -> list[str]:
    """The reasons of the samples the guard blocked, each once, in order."""
    out: list[str] = []
    for v in verdicts:
        if v.verdict == "block":
            out.extend(r for r in v.reasons if r not in out)
    return out or ["the guard's verdict was block"]


@router.post("/predict", response_model=PredictResponse, responses=_RESPONSES, openapi_extra=_BODY)
async def predict(request: Request, key: LimitedClient) -> Response:
    """Classify a batch of samples (at most ``limits.max_batch``)."""
    start = time.perf_counter()
    state = request.app.state
    request_id = uuid.uuid4().hex
    check_content_type(request.headers.get("content-type"))
    x = parse_predict_body(await request.body(), state.input_spec)
    n = int(x.shape[0])
    await take(request, key, "samples", n)
    runtime = state.runtime
    inf = await state.batcher.infer(x, str(key.id))
    verdicts: list[GuardVerdict] = list(inf.verdicts)
    labels = [v.verdict for v in verdicts]
    shown = police(inf.probabilities, state.settings.output)
    entry: dict[str, Any] = {
        "kind": "decision",
        "request_id": request_id,
        "key_id": key.id,
        "n": n,
        "input_sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
        "model_sha256": runtime.model_sha256,
        "verdict": inf.verdict,
        "verdicts": labels,
        "scores": [v.scores for v in verdicts],
        "predictions": inf.predictions,
        "latency_ms": round((time.perf_counter() - start) * 1000, 3),
    }
    metrics = state.metrics
    metrics.verdicts.labels(inf.verdict).inc()
    metrics.samples.inc(n)
    if inf.verdict == "hold":
        result = HeldResult(
            predictions=inf.predictions,
            probabilities=shown.probabilities,
            top_k=shown.top_k,
            verdicts=labels,
        )
        ticket = await state.reviews.hold(
            key=key, request_id=request_id, verdicts=verdicts, result=result, inputs=x.numpy()
        )
        entry["ticket"] = ticket.id
        _remember(state, entry, await _audit(state, entry))
        held = HeldResponse(
            **ticket_view(ticket).model_dump(exclude_unset=True), poll=f"/v1/tickets/{ticket.id}"
        )
        return model_response(held, 202, exclude_unset=True)
    if inf.verdict == "block":
        block, created = await state.blocks.block(
            key.id, reasons=block_reasons(verdicts), created_by="guard", request_id=request_id
        )
        entry["block"] = {
            "block_id": block.id,
            "created": created,
            "reasons": block.reasons,
            "expires": block.expires.isoformat() if block.expires else None,
        }
        _remember(state, entry, await _audit(state, entry))
        return refusal(request_id, block)
    _remember(state, entry, await _audit(state, entry))
    answer = PredictResponse(
        predictions=inf.predictions,
        probabilities=shown.probabilities,
        top_k=shown.top_k,
        verdicts=labels,
        request_id=request_id,
    )
    return model_response(answer, exclude_none=True)


async def _audit(state: Any, entry: dict[str, Any]) -> int:
    """Append ``entry``; returns once it is durable."""
    start = time.perf_counter()
    index = await state.audit.submit(entry)
    state.metrics.audit_seconds.observe(time.perf_counter() - start)
    return index


def _remember(state: Any, entry: dict[str, Any], audit_index: int) -> None:
    guard = state.runtime.guard
    if guard is not None and state.history.score_capacity:
        state.history.record(entry["scores"], getattr(guard, "detectors", ()))
    if state.recent is not None:
        state.recent.append(
            DecisionView(
                ts=time.time(),
                request_id=entry["request_id"],
                key_id=entry["key_id"],
                n=entry["n"],
                verdict=entry["verdict"],
                predictions=entry["predictions"][:8],
                latency_ms=entry["latency_ms"],
                ticket=entry.get("ticket"),
                blocked="block" in entry,
                audit_index=audit_index,
            )
        )
