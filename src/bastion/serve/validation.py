"""Validation at the edge: a body-size limit enforced while the body streams in, and the
parsing of predict bodies into a float32 tensor checked against the model's input spec.

Bodies: ``{"inputs": [...]}`` with one nested array per sample (a feature vector
``[f1, …, fn]`` for tabular models, ``[[[…]]]`` of shape (C, H, W) for images), or, when
the spec names its features, one object per sample ``{"feature_name": value, …}``; or
``{"b64": …, "shape": [n, …]}`` (base64 of little-endian float32).

Every problem raises :class:`InputError` with an HTTP status and a message that says what
was wrong: 400 for a body that is not JSON, 413 for a body or batch too large, 415 for a
content type other than JSON, and 422 for a body of the wrong structure, shape or type,
holding NaN/Inf, a value outside its feature's bounds, or a fraction where a feature is an
integer — the 422s name the sample and the feature (index, and name when the spec has
feature names).
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

from bastion.data.spec import InputSpec as DataInputSpec
from bastion.serve.errors import error_bytes

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
    body = error_bytes(status, message)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


@dataclass(frozen=True)
class RequestSpec:
    """What one predict request may hold: the sample shape, per-feature bounds (``lower``/
    ``upper``: flat arrays of one value per feature, or None for the one ``bounds`` pair),
    the integer features' flat indices, feature names, the batch limit and the tolerance
    (slack beyond a bound, times max(1, the feature's range); distance from a whole number
    for integer features). Build it from the model's input spec with :meth:`from_spec`."""

    sample_shape: tuple[int, ...]
    bounds: tuple[float, float] = (0.0, 1.0)
    max_batch: int = 64
    tolerance: float = 1e-4
    modality: str = "image"
    lower: np.ndarray | None = None
    upper: np.ndarray | None = None
    integer: tuple[int, ...] = ()
    feature_names: tuple[str, ...] | None = None

    @classmethod
    def from_spec(cls, spec: DataInputSpec, *, max_batch: int, tolerance: float) -> RequestSpec:
        """The request spec of a model whose inputs are described by ``spec``."""
        sb = spec.scalar_bounds()
        lower = upper = None
        if sb is None:
            lower = spec.lower_tensor().flatten().double().numpy()
            upper = spec.upper_tensor().flatten().double().numpy()
            bounds = (float(lower.min()), float(upper.max()))
        else:
            bounds = sb
        return cls(
            sample_shape=tuple(int(s) for s in spec.shape),
            bounds=bounds,
            max_batch=max_batch,
            tolerance=tolerance,
            modality=spec.modality,
            lower=lower,
            upper=upper,
            integer=tuple(spec.integer),
            feature_names=tuple(spec.feature_names) if spec.feature_names else None,
        )

    @property
    def sample_size(self) -> int:
        return math.prod(self.sample_shape)

    @property
    def tabular(self) -> bool:
        return self.modality == "tabular"

    def feature(self, i: int) -> str:
        """How a message names flat feature ``i``: index and name, or pixel position."""
        if self.feature_names:
            return f"feature {i} ({self.feature_names[i]!r})"
        if len(self.sample_shape) > 1:
            where = tuple(int(v) for v in np.unravel_index(i, self.sample_shape))
            return f"{'pixel' if self.modality == 'image' else 'value'} {where}"
        return f"feature {i}"

    def admissible(self) -> tuple[np.ndarray, np.ndarray]:
        """The least and greatest value each feature may take (bounds plus the tolerance's
        slack), as float64: one value for all features, or one per flat feature. The
        OpenAPI document's bounds are these same numbers."""
        if self.lower is None or self.upper is None:
            lo, hi = self.bounds
            slack = self.tolerance * max(1.0, hi - lo)
            return np.array([lo - slack]), np.array([hi + slack])
        slack_a = self.tolerance * np.maximum(1.0, self.upper - self.lower)
        return self.lower - slack_a, self.upper + slack_a

    def shape_text(self) -> str:
        shape = list(self.sample_shape)
        if self.tabular and len(shape) == 1:
            return f"{shape} ({shape[0]} features)"
        return str(shape)


InputSpec = RequestSpec  # the name this record had before models declared an input spec


def check_content_type(content_type: str | None) -> None:
    if content_type and content_type.split(";")[0].strip().lower() != "application/json":
        raise InputError(415, f"send the body as application/json, not {content_type}")


def parse_predict_body(body: bytes, spec: RequestSpec) -> torch.Tensor:
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
        inputs = doc["inputs"]
        if isinstance(inputs, list) and inputs and all(isinstance(r, dict) for r in inputs):
            arr = _from_records(inputs, spec)
        else:
            arr = _from_inputs(inputs, body, spec)
    elif keys == {"b64", "shape"}:
        arr = _from_b64(doc["b64"], doc["shape"], spec)
    else:
        raise InputError(
            422,
            f"body keys {sorted(keys)} not understood: send exactly 'inputs' (nested arrays), "
            "or 'b64' and 'shape' (base64 of little-endian float32)",
        )
    return _check_values(arr, spec)


def _from_inputs(inputs: object, body: bytes, spec: RequestSpec) -> np.ndarray:
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
        hint = ""
        if arr.ndim == len(spec.sample_shape) and arr.shape == spec.sample_shape:
            hint = ": 'inputs' is a list of samples, wrap one sample in a list ([[...]])"
        raise InputError(
            422,
            f"each input must have shape {spec.shape_text()}, got {list(arr.shape[1:])}{hint}",
        )
    return arr


def _from_records(records: list[dict], spec: RequestSpec) -> np.ndarray:
    """Samples given as ``{"feature_name": value, ...}`` objects (named tabular features)."""
    names = spec.feature_names
    if not names or len(spec.sample_shape) != 1:
        raise InputError(
            422,
            "samples as objects need a model whose input spec names its features; send each "
            f"sample as an array of shape {spec.shape_text()}",
        )
    _check_batch(len(records), spec)
    index = {n: i for i, n in enumerate(names)}
    arr = np.empty((len(records), len(names)), dtype=np.float64)
    for k, rec in enumerate(records):
        unknown = [key for key in rec if key not in index]
        if unknown:
            raise InputError(
                422, f"sample {k}: unknown feature {unknown[0]!r} (the features are {list(names)})"
            )
        missing = [n for n in names if n not in rec]
        if missing:
            raise InputError(
                422, f"sample {k}: missing feature {index[missing[0]]} ({missing[0]!r})"
            )
        for key, value in rec.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise InputError(
                    422,
                    f"sample {k}: feature {index[key]} ({key!r}) must be a number, got "
                    f"{type(value).__name__ if value is not None else 'null'}",
                )
            arr[k, index[key]] = value
    return arr


def _from_b64(data: object, shape: object, spec: RequestSpec) -> np.ndarray:
    want = f"[n, {', '.join(map(str, spec.sample_shape))}]"
    if not isinstance(data, str):
        raise InputError(422, "'b64' must be a base64 string")
    if not isinstance(shape, list) or not all(
        isinstance(s, int) and not isinstance(s, bool) for s in shape
    ):
        generic = "[n, features]" if spec.tabular else "[n, c, h, w]"
        raise InputError(422, f"'shape' must be an array of integers {generic}")
    if len(shape) != len(spec.sample_shape) + 1 or tuple(shape[1:]) != spec.sample_shape:
        raise InputError(422, f"'shape' must be {want}, got {shape}")
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


def _check_batch(n: int, spec: RequestSpec) -> None:
    if n < 1:
        raise InputError(422, "the batch is empty: send at least one sample")
    if n > spec.max_batch:
        raise InputError(413, f"batch of {n} samples exceeds the limit of {spec.max_batch}")


def _first(mask: np.ndarray) -> tuple[int, int]:
    """(sample, flat feature) of the first True of a (N, D) mask."""
    k, i = np.argwhere(mask)[0]
    return int(k), int(i)


def _check_values(arr: np.ndarray, spec: RequestSpec) -> torch.Tensor:
    """Check the values as sent (float64), then hand the model float32."""
    flat = np.asarray(arr, dtype=np.float64).reshape(arr.shape[0], -1)
    finite = np.isfinite(flat)
    if not bool(finite.all()):
        bad = np.flatnonzero(~finite.all(1)).tolist()
        kinds = "NaN" if bool(np.isnan(flat).any()) else "Inf"
        if kinds == "NaN" and bool(np.isinf(flat).any()):
            kinds = "NaN and Inf"
        k, i = _first(~finite)
        raise InputError(
            422,
            f"inputs hold {kinds} (samples {bad[:10]}), first at sample {k}, "
            f"{spec.feature(i)}: send finite numbers",
        )
    lo_ok, hi_ok = spec.admissible()
    outside = (flat < lo_ok) | (flat > hi_ok)
    if bool(outside.any()):
        k, i = _first(outside)
        if spec.lower is None or spec.upper is None:
            lo, hi = spec.bounds
            xmin, xmax = float(flat.min()), float(flat.max())
            raise InputError(
                422,
                f"input values must lie within [{lo:g}, {hi:g}]; got min {xmin:g}, max "
                f"{xmax:g} (first: sample {k}, {spec.feature(i)} = {flat[k, i]:g})",
            )
        n_bad = int(outside.any(0).sum())
        more = f" ({n_bad} features out of bounds)" if n_bad > 1 else ""
        raise InputError(
            422,
            f"sample {k}: {spec.feature(i)} is {flat[k, i]:g}, outside its bounds "
            f"[{spec.lower[i]:g}, {spec.upper[i]:g}]{more}",
        )
    if spec.integer:
        idx = np.asarray(spec.integer, dtype=np.int64)
        vals = flat[:, idx]
        frac = np.abs(vals - np.round(vals)) > spec.tolerance
        if bool(frac.any()):
            k, j = _first(frac)
            i = int(idx[j])
            raise InputError(
                422, f"sample {k}: {spec.feature(i)} must be a whole number, got {flat[k, i]:g}"
            )
    x = torch.from_numpy(flat.astype(np.float32).reshape(arr.shape))
    if not bool(torch.isfinite(x).all()):  # finite in float64, too large for float32
        raise InputError(422, "inputs hold values too large for float32")
    return x
