"""Validation at the edge: a body-size limit enforced while the body streams in, and the
parsing of predict bodies into a checked float32 tensor.

Every problem raises :class:`InputError` with an HTTP status and a message that says what
was wrong: 400 for a body that is not JSON, 413 for a body or batch too large, 415 for a
content type other than JSON, 422 for a body of the wrong structure, shape, type, bounds,
or holding NaN/Inf.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LITERALS = re.compile(rb"\b(?:true|false|null)\b")


class InputError(Exception):
    """A request the gateway refuses; ``status`` is the HTTP status to answer."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class BodyTooLarge(InputError):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body larger than the limit of {limit} bytes")


class BodySizeLimitMiddleware:
    """Refuses bodies over ``limit`` bytes with 413: at once from ``Content-Length``, and
    while reading for chunked bodies (the count stops the read before it is buffered)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    await _send_error(send, 400, "malformed Content-Length header")
                    return
                if declared > self.limit:
                    await _send_error(send, 413, str(BodyTooLarge(self.limit)))
                    return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise BodyTooLarge(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge as exc:
            if started:
                raise
            await _send_error(send, 413, exc.message)


async def _send_error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"detail": message}).encode()
    await send({
        "type": "http.response.start", "status": status,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), (b"connection", b"close")],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class InputSpec:
    """What one predict request may hold."""

    sample_shape: tuple[int, ...]
    bounds: tuple[float, float]
    max_batch: int
    tolerance: float = 1e-4

    @property
    def sample_size(self) -> int:
        return math.prod(self.sample_shape)


def check_content_type(content_type: str | None) -> None:
    if content_type and content_type.split(";")[0].strip().lower() != "application/json":
        raise InputError(415, f"send the body as application/json, not {content_type}")


def parse_predict_body(body: bytes, spec: InputSpec) -> torch.Tensor:
    """Parse ``{"inputs": [...]}`` or ``{"b64": ..., "shape": [...]}`` into a checked
    (N, *sample_shape) float32 tensor."""
    if not body:
        raise InputError(422, 'empty body: send {"inputs": [...]} or {"b64": ..., "shape": [...]}')
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise InputError(400, f"body is not valid JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InputError(422, f"body must be a JSON object, got {type(doc).__name__}")
    keys = set(doc)
    if keys == {"inputs"}:
        arr = _from_inputs(doc["inputs"], body, spec)
    elif keys == {"b64", "shape"}:
        arr = _from_b64(doc["b64"], doc["shape"], spec)
    else:
        raise InputError(
            422,
            f"body keys {sorted(keys)} not understood: send exactly 'inputs' (nested arrays), "
            "or 'b64' and 'shape' (base64 of little-endian float32)",
        )
    return _check_values(arr, spec)


def _from_inputs(inputs: object, body: bytes, spec: InputSpec) -> np.ndarray:
    if not isinstance(inputs, list):
        raise InputError(422, f"'inputs' must be an array of samples, got {type(inputs).__name__}")
    _check_batch(len(inputs), spec)
    if _LITERALS.search(body):  # the only strings of this body are its keys
        raise InputError(422, "'inputs' must hold numbers only (found true, false or null)")
    try:
        arr = np.asarray(inputs)
    except ValueError:
        raise InputError(
            422, f"'inputs' is ragged: every sample must have shape {list(spec.sample_shape)}"
        ) from None
    if arr.dtype.kind not in "iuf":
        raise InputError(422, "'inputs' must hold numbers only (found strings or objects)")
    if arr.shape[1:] != spec.sample_shape:
        raise InputError(
            422,
            f"each input must have shape {list(spec.sample_shape)}, got {list(arr.shape[1:])}",
        )
    return arr


def _from_b64(data: object, shape: object, spec: InputSpec) -> np.ndarray:
    if not isinstance(data, str):
        raise InputError(422, "'b64' must be a base64 string")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in shape
    ):
        raise InputError(422, "'shape' must be an array of integers [n, c, h, w]")
    if len(shape) != len(spec.sample_shape) + 1 or tuple(shape[1:]) != spec.sample_shape:
        raise InputError(422, f"'shape' must be [n, {', '.join(map(str, spec.sample_shape))}], "
                         f"got {shape}")  # fmt: skip
    _check_batch(shape[0], spec)
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise InputError(422, "'b64' is not valid base64") from None
    expected = 4 * shape[0] * spec.sample_size
    if len(raw) != expected:
        raise InputError(
            422, f"'b64' decodes to {len(raw)} bytes; shape {shape} of float32 needs {expected}"
        )
    return np.frombuffer(raw, dtype="<f4").reshape(shape)


def _check_batch(n: int, spec: InputSpec) -> None:
    if n < 1:
        raise InputError(422, "the batch is empty: send at least one sample")
    if n > spec.max_batch:
        raise InputError(413, f"batch of {n} samples exceeds the limit of {spec.max_batch}")


def _check_values(arr: np.ndarray, spec: InputSpec) -> torch.Tensor:
    x = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))
    finite = torch.isfinite(x)
    if not bool(finite.all()):
        bad = (~finite).flatten(1).any(1).nonzero().flatten().tolist()
        kinds = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        if kinds == "NaN" and bool(torch.isinf(x).any()):
            kinds = "NaN and Inf"
        raise InputError(422, f"inputs hold {kinds} (samples {bad[:10]}): send finite numbers")
    lo, hi = spec.bounds
    xmin, xmax = float(x.min()), float(x.max())
    if xmin < lo - spec.tolerance or xmax > hi + spec.tolerance:
        raise InputError(
            422, f"input values must lie within [{lo:g}, {hi:g}]; got min {xmin:g}, max {xmax:g}"
        )
    return x
