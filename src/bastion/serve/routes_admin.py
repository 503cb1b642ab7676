"""Operations routes: health, metrics, recent decisions, drift, and API keys (admin).

* ``GET /healthz`` — liveness and what is loaded (no secrets, no auth);
* ``GET /metrics`` — Prometheus text format (the app's own registry);
* ``GET /v1/decisions`` — the latest decisions kept in memory (reviewer or admin);
* ``GET /v1/guard/drift`` — the drift test's p-value and alert (reviewer or admin);
* ``GET/POST /v1/keys``, ``POST /v1/keys/{id}/revoke`` — manage keys (admin); every
  change is audited before it is acknowledged.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from bastion.errors import StoreError
from bastion.guard.verdict import DriftStatus
from bastion.serve.auth import AdminKey, ReviewerKey
from bastion.serve.deps import AUTH_ERRORS
from bastion.serve.errors import error_responses
from bastion.serve.params import IdPath, PageLimit
from bastion.serve.routes_predict import DecisionView
from bastion.store import keys as keystore

router = APIRouter(tags=["operations"])


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    guard: bool
    rate_limit: Literal["off", "local", "redis"]
    audit: str = Field(description="the audit sink in use (NullAuditSink: not logged)")


class DriftView(BaseModel):
    """The guard's drift test (``enabled`` false and ``method`` "disabled" without one)."""

    enabled: bool
    p_value: float
    alert: bool
    window_size: int = 0
    window_capacity: int = 0
    alpha: float | None = None
    statistic: float = 0.0
    method: str = "disabled"


@router.get("/healthz", response_model=Health, responses=error_responses())
async def healthz(request: Request) -> Health:
    state = request.app.state
    runtime = state.runtime
    return Health(
        status="ok",
        model=runtime.loaded.name,
        guard=runtime.guard is not None,
        rate_limit=state.limiter_kind,
        audit=type(state.audit).__name__,
    )


def refresh_drift(state: Any) -> DriftView:
    """The drift status (also exported as gauges); ``enabled`` false without a guard."""
    drift: DriftStatus | None = state.runtime.drift_status()
    if drift is None:
        return DriftView(enabled=False, p_value=1.0, alert=False)
    state.metrics.drift_p_value.set(drift.p_value)
    state.metrics.drift_alert.set(1.0 if drift.alert else 0.0)
    return DriftView(enabled=drift.method != "disabled", **drift.model_dump())


@router.get(
    "/metrics",
    response_class=Response,
    response_model=None,
    responses={
        200: {
            "content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
            "description": "Prometheus text exposition format",
        },
        **error_responses(),
    },
)
async def metrics(request: Request) -> Response:
    state = request.app.state
    refresh_drift(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/decisions",
    response_model=list[DecisionView],
    responses=error_responses(*AUTH_ERRORS, 422),
)
async def recent_decisions(
    request: Request, _key: ReviewerKey, limit: PageLimit = 50
) -> list[DecisionView]:
    """The latest decisions, newest first (kept in memory; the audit log has them all)."""
    recent = request.app.state.recent or []
    return list(reversed(recent))[:limit]


@router.get("/v1/guard/drift", response_model=DriftView, responses=error_responses(*AUTH_ERRORS))
async def drift(request: Request, _key: ReviewerKey) -> DriftView:
    return refresh_drift(request.app.state)


class KeyRequest(BaseModel):
    role: Literal["client", "reviewer", "admin"]
    name: str = Field("", max_length=128, pattern=r"^[^\x00]*$")  # no NUL: PostgreSQL


class KeyView(BaseModel):
    """An API key's record: never its secret."""

    id: int
    name: str
    role: Literal["client", "reviewer", "admin"]
    prefix: str
    created: datetime
    revoked: datetime | None

    @classmethod
    def of(cls, info: keystore.KeyInfo) -> KeyView:
        return cls(
            id=info.id,
            name=info.name,
            role=info.role,
            prefix=info.prefix,
            created=info.created,
            revoked=info.revoked,
        )


class CreatedKey(KeyView):
    key: str = Field(description="the secret, shown only in this answer")


_KEY_ID = {"key_id": "$response.body#/id"}
_CLIENT_ID = {"client_id": "$response.body#/id"}
_KEY_LINKS = {
    "RevokeKey": {"operationId": "revoke_key", "parameters": _KEY_ID},
    "BlockClient": {"operationId": "put_block", "parameters": _CLIENT_ID},
    "GetBlock": {"operationId": "get_block", "parameters": _CLIENT_ID},
    "Unblock": {"operationId": "delete_block", "parameters": _CLIENT_ID},
}


@router.get(
    "/v1/keys", tags=["keys"], response_model=list[KeyView], responses=error_responses(*AUTH_ERRORS)
)
async def list_keys(request: Request, _key: AdminKey) -> list[KeyView]:
    rows = await anyio.to_thread.run_sync(keystore.list_keys, request.app.state.engine)
    return [KeyView.of(r) for r in rows]


@router.post(
    "/v1/keys",
    tags=["keys"],
    status_code=201,
    response_model=CreatedKey,
    responses={
        201: {"description": "the key, with its secret", "links": _KEY_LINKS},
        **error_responses(400, *AUTH_ERRORS, 422),
    },
)
async def create_key(request: Request, body: KeyRequest, admin: AdminKey) -> CreatedKey:
    """Create a key; the answer holds the secret, which is shown only this once."""
    state = request.app.state
    info, secret = await anyio.to_thread.run_sync(
        keystore.create_key, state.engine, body.role, body.name
    )
    await state.audit.submit(
        {
            "kind": "key",
            "action": "create",
            "key_id": info.id,
            "role": info.role,
            "by_key_id": admin.id,
        }
    )
    return CreatedKey(**KeyView.of(info).model_dump(), key=secret)


@router.post(
    "/v1/keys/{key_id}/revoke",
    tags=["keys"],
    response_model=KeyView,
    responses=error_responses(*AUTH_ERRORS, 404, 422, describe={404: "no such API key"}),
)
async def revoke_key(request: Request, key_id: IdPath, admin: AdminKey) -> KeyView:
    state = request.app.state
    try:
        info = await anyio.to_thread.run_sync(keystore.revoke_key, state.engine, key_id)
    except StoreError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no API key {key_id}") from None
    state.authenticator.forget(key_id)
    await state.audit.submit(
        {
            "kind": "key",
            "action": "revoke",
            "key_id": key_id,
            "role": info.role,
            "by_key_id": admin.id,
        }
    )
    return KeyView.of(info)
