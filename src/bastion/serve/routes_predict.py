"""``POST /v1/predict``: validate, rate-limit samples, run model + guard, audit, answer.

A request whose verdict is ``hold`` answers 202 with a ticket (its answer is kept for the
reviewer); ``block`` answers 403; ``allow`` and ``flag`` answer 200. In every case the
audit entry is durable before the answer leaves.
"""

from __future__ import annotations

import hashlib
import time
import uuid
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from bastion.serve.deps import LimitedClient, take
from bastion.serve.reviews import ticket_view
from bastion.serve.validation import check_content_type, parse_predict_body

router = APIRouter(prefix="/v1", tags=["predict"])


class PredictRequest(BaseModel):
    """Either ``inputs`` (nested arrays, one per sample, each of the model's sample shape)
    or ``b64`` + ``shape`` (base64 of little-endian float32, shape ``[n, c, h, w]``)."""

    inputs: list[Any] | None = None
    b64: str | None = None
    shape: list[int] | None = None


class PredictResponse(BaseModel):
    predictions: list[int]
    probabilities: list[list[float]]
    verdicts: list[Literal["allow", "flag"]]
    request_id: str


class HeldResponse(BaseModel):
    ticket: str
    status: Literal["held"]
    request_id: str
    poll: str = Field(description="GET this URL (with your key) until status is not 'held'")


class ErrorResponse(BaseModel):
    detail: str


_RESPONSES: dict[int | str, dict[str, Any]] = {
    202: {"model": HeldResponse, "description": "held for human review"},
    400: {"model": ErrorResponse}, 401: {"model": ErrorResponse}, 403: {"model": ErrorResponse},
    413: {"model": ErrorResponse}, 415: {"model": ErrorResponse}, 422: {"model": ErrorResponse},
    429: {"model": ErrorResponse},
}  # fmt: skip
_BODY = {
    "requestBody": {
        "required": True,
        "content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
    }
}


@router.post("/predict", response_model=PredictResponse, responses=_RESPONSES, openapi_extra=_BODY)
async def predict(request: Request, key: LimitedClient) -> JSONResponse:
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
    probabilities = inf.probabilities.tolist()
    entry = {
        "kind": "decision", "request_id": request_id, "key_id": key.id, "n": n,
        "input_sha256": hashlib.sha256(x.numpy().tobytes()).hexdigest(),
        "model_sha256": runtime.model_sha256, "verdict": inf.verdict,
        "verdicts": [v["verdict"] for v in inf.verdicts], "scores": inf.scores,
        "predictions": inf.predictions,
        "latency_ms": round((time.perf_counter() - start) * 1000, 3),
    }  # fmt: skip
    metrics = state.metrics
    metrics.verdicts.labels(inf.verdict).inc()
    metrics.samples.inc(n)
    if inf.verdict == "hold":
        result = {"predictions": inf.predictions, "probabilities": probabilities,
                  "verdicts": [v["verdict"] for v in inf.verdicts]}  # fmt: skip
        ticket = await state.reviews.hold(key=key, request_id=request_id, verdicts=inf.verdicts,
                                          result=result)  # fmt: skip
        entry["ticket"] = ticket.id
        _remember(state, entry, await _audit(state, entry))
        body = ticket_view(ticket)
        body["poll"] = f"/v1/tickets/{ticket.id}"
        return JSONResponse(body, status_code=202)
    _remember(state, entry, await _audit(state, entry))
    if inf.verdict == "block":
        return JSONResponse(
            {"detail": "request refused by the input guard", "request_id": request_id},
            status_code=403,
        )
    return JSONResponse({
        "predictions": inf.predictions, "probabilities": probabilities,
        "verdicts": [v["verdict"] for v in inf.verdicts], "request_id": request_id,
    })  # fmt: skip


async def _audit(state: Any, entry: dict[str, Any]) -> int:
    """Append ``entry``; returns once it is durable."""
    start = time.perf_counter()
    index = await state.audit.submit(entry)
    state.metrics.audit_seconds.observe(time.perf_counter() - start)
    return index


def _remember(state: Any, entry: dict[str, Any], audit_index: int) -> None:
    if state.recent is not None:
        state.recent.append({
            "ts": time.time(), "request_id": entry["request_id"], "key_id": entry["key_id"],
            "n": entry["n"], "verdict": entry["verdict"], "predictions": entry["predictions"][:8],
            "latency_ms": entry["latency_ms"], "ticket": entry.get("ticket"),
            "audit_index": audit_index,
        })  # fmt: skip
