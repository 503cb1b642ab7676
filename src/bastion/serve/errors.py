"""The gateway's one error body, and the handlers that give every error that shape.

Every 4xx (and the 500 of a bug) answers :class:`ErrorResponse`: ``detail`` (one line, what
was wrong), ``code`` (a stable machine-readable name of the status), and only where they
apply ``errors`` (each problem of a request whose parameters or body do not match the
route), ``request_id`` (to quote to the operator: a blocked client, a server error) and
``blocked_until`` (a blocked client). The OpenAPI document declares this one schema on
every route for each status the route can answer (:func:`error_responses`).

A 405 carries an ``Allow`` header listing every method of every route on that path
(Starlette's own lists only the first route it matched).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

log = logging.getLogger(__name__)

ErrorCode = Literal[
    "bad_request",
    "unauthorized",
    "forbidden",
    "blocked",
    "not_found",
    "method_not_allowed",
    "conflict",
    "too_large",
    "unsupported_media_type",
    "invalid",
    "rate_limited",
    "internal",
    "unavailable",
]

CODES: dict[int, ErrorCode] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
}


class FieldIssue(BaseModel):
    """One problem of a request's parameters or body: where, what, and its kind."""

    loc: list[str | int] = Field(description="e.g. ['query', 'start'] or ['body', 'role']")
    msg: str
    type: str = Field(description="pydantic's error type, e.g. 'less_than_equal'")


class ErrorResponse(BaseModel):
    """Every error the gateway answers (4xx, and 500 for a bug)."""

    detail: str = Field(description="what was wrong, in one line")
    code: ErrorCode = Field(
        description="the kind of error (stable; 'blocked' for a blocked client)"
    )
    errors: list[FieldIssue] | None = Field(
        None, description="each problem of the parameters or body (code 'invalid')"
    )
    request_id: str | None = Field(
        None, description="quote it to the operator (blocked clients, server errors)"
    )
    blocked_until: datetime | None = Field(
        None, description="blocked clients: when the block lapses (UTC); null: until removed"
    )


def code_of(status: int) -> ErrorCode:
    return CODES.get(status, "bad_request" if status < 500 else "internal")


def error_response(
    status: int,
    detail: str,
    *,
    headers: Mapping[str, str] | None = None,
    code: ErrorCode | None = None,
    **extra: Any,
) -> Response:
    """An :class:`ErrorResponse` answer; fields in ``extra`` are sent even when None."""
    body = ErrorResponse(detail=detail, code=code or code_of(status), **extra)
    return Response(
        body.model_dump_json(exclude_unset=True),
        status,
        headers=dict(headers or {}),
        media_type="application/json",
    )


def error_bytes(status: int, detail: str) -> bytes:
    """The body of an error sent below FastAPI (the body-size middleware)."""
    return (
        ErrorResponse(detail=detail, code=code_of(status))
        .model_dump_json(exclude_unset=True)
        .encode()
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(app: Any, scope: Mapping[str, Any]) -> list[str]:
    """Every method some route of ``app`` answers on the path of ``scope`` (asked of each
    route with Starlette's public ``matches``, so included routers count too)."""
    routes = list(getattr(getattr(app, "router", None), "routes", ()))
    allowed = []
    for method in _METHODS:
        probe = {**scope, "method": method}
        if any(route.matches(probe)[0] == Match.FULL for route in routes):
            allowed.append(method)
    return allowed


def _one_line(issue: FieldIssue) -> str:
    where = ".".join(str(p) for p in issue.loc)
    return f"{where}: {issue.msg}" if where else issue.msg


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    headers = dict(exc.headers or {})
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 405:
        allow = ", ".join(allowed_methods(request.app, request.scope))
        headers["Allow"] = allow
        detail = f"method {request.method} not allowed on {request.url.path}: use {allow}"
    return error_response(exc.status_code, detail, headers=headers)


async def validation_error(_request: Request, exc: Exception) -> Response:
    """FastAPI's request validation, in the one error shape: a body that is not JSON is
    400 (as ``POST /v1/predict`` answers it); anything else 422 with each problem."""
    assert isinstance(exc, RequestValidationError)
    raw = list(exc.errors())
    if raw and all(e.get("type") == "json_invalid" for e in raw):
        reason = (raw[0].get("ctx") or {}).get("error", "JSON decode error")
        return error_response(400, f"body is not valid JSON: {reason}")
    issues = [
        FieldIssue(
            loc=[p if isinstance(p, int) else str(p) for p in e.get("loc", ())],
            msg=str(e.get("msg", "invalid")),
            type=str(e.get("type", "value_error")),
        )
        for e in raw
    ]
    detail = _one_line(issues[0]) if issues else "invalid request"
    if len(issues) > 1:
        detail += f" (and {len(issues) - 1} more)"
    return error_response(422, detail, errors=issues)


async def internal_error(request: Request, exc: Exception) -> Response:
    request_id = uuid.uuid4().hex
    log.error(
        "internal error %s on %s %s", request_id, request.method, request.url.path, exc_info=exc
    )
    return error_response(500, "internal server error", request_id=request_id)


async def client_gone(request: Request, _exc: Exception) -> Response:
    """The client closed the connection before its body arrived (a load generator stopping,
    a timeout): nobody reads the answer, and it is no server error."""
    log.info("client went away during %s %s", request.method, request.url.path)
    return error_response(400, "the client closed the connection")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the framework raises through :class:`ErrorResponse`."""
    app.add_exception_handler(ClientDisconnect, client_gone)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(Exception, internal_error)


_DESCRIPTIONS: dict[int, str] = {
    400: "the body is not JSON",
    401: "missing, unknown or revoked API key",
    403: "the key's role may not use this route",
    404: "no such resource",
    409: "conflicts with the resource's state",
    413: "body over limits.max_body_bytes (or batch over limits.max_batch)",
    415: "the body is not application/json",
    422: "invalid parameters or body (each problem in 'errors')",
    429: "rate limit exceeded (see Retry-After)",
    503: "the rate limiter is unavailable (see Retry-After)",
}
_RETRY_AFTER = {
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "schema": {"type": "string", "pattern": "^[0-9]+$"},
    }
}
_WWW_AUTHENTICATE = {
    "WWW-Authenticate": {"description": "the scheme to use", "schema": {"type": "string"}}
}


def error_responses(
    *codes: int, blocked: bool = False, describe: dict[int, str] | None = None
) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with :class:`ErrorResponse` and a description.

    413 is always added (the body-size limit guards every route). ``blocked`` adds the
    blocked-client case to the 403's description.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in sorted({*codes, 413}):
        text = (describe or {}).get(code) or _DESCRIPTIONS.get(code, "error")
        if code == 403 and blocked:
            text = f"{text}, or the client is blocked by policy (code 'blocked')"
        spec: dict[str, Any] = {"model": ErrorResponse, "description": text}
        if code in (429, 503):
            spec["headers"] = _RETRY_AFTER
        elif code == 401:
            spec["headers"] = _WWW_AUTHENTICATE
        out[code] = spec
    return out
