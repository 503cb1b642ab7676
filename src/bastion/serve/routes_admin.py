"""Operations routes: health, metrics, recent decisions, drift, and API keys (admin).

* ``GET /healthz`` — liveness and what is loaded (no secrets, no auth);
* ``GET /metrics`` — Prometheus text format (the app's own registry);
* ``GET /v1/decisions`` — the latest decisions kept in memory (reviewer or admin);
* ``GET /v1/guard/drift`` — the drift test's p-value and alert (reviewer or admin);
* ``GET/POST /v1/keys``, ``POST /v1/keys/{id}/revoke`` — manage keys (admin); every
  change is audited before it is acknowledged.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Request, Response, status
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from bastion.errors import StoreError
from bastion.serve.auth import AdminKey, ReviewerKey
from bastion.store import keys as keystore

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz(request: Request) -> dict[str, Any]:
    state = request.app.state
    runtime = state.runtime
    return {
        "status": "ok", "model": runtime.loaded.name, "guard": runtime.guard is not None,
        "rate_limit": state.limiter_kind, "audit": type(state.audit).__name__,
    }  # fmt: skip


def refresh_drift(state: Any) -> dict[str, Any] | None:
    drift = state.runtime.drift_status()
    if drift is not None:
        state.metrics.drift_p_value.set(float(drift.get("p_value", 1.0)))
        state.metrics.drift_alert.set(1.0 if drift.get("alert") else 0.0)
    return drift


@router.get("/metrics", response_class=Response)
async def metrics(request: Request) -> Response:
    state = request.app.state
    refresh_drift(state)
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/decisions")
async def recent_decisions(
    request: Request, _key: ReviewerKey, limit: Annotated[int, Query(ge=1, le=1000)] = 50
) -> list[dict[str, Any]]:
    """The latest decisions, newest first (kept in memory; the audit log has them all)."""
    recent = request.app.state.recent or []
    return list(reversed(recent))[:limit]


@router.get("/v1/guard/drift")
async def drift(request: Request, _key: ReviewerKey) -> dict[str, Any]:
    status_ = refresh_drift(request.app.state)
    return status_ if status_ is not None else {"enabled": False, "alert": False, "p_value": 1.0}


class KeyRequest(BaseModel):
    role: Literal["client", "reviewer", "admin"]
    name: str = Field("", max_length=128)


def _key_view(info: keystore.KeyInfo) -> dict[str, Any]:
    return {
        "id": info.id, "name": info.name, "role": info.role, "prefix": info.prefix,
        "created": info.created.isoformat(),
        "revoked": info.revoked.isoformat() if info.revoked else None,
    }  # fmt: skip


@router.get("/v1/keys", tags=["keys"])
async def list_keys(request: Request, _key: AdminKey) -> list[dict[str, Any]]:
    rows = await anyio.to_thread.run_sync(keystore.list_keys, request.app.state.engine)
    return [_key_view(r) for r in rows]


@router.post("/v1/keys", tags=["keys"], status_code=201)
async def create_key(request: Request, body: KeyRequest, admin: AdminKey) -> dict[str, Any]:
    """Create a key; the answer holds the secret, which is shown only this once."""
    state = request.app.state
    info, secret = await anyio.to_thread.run_sync(
        keystore.create_key, state.engine, body.role, body.name
    )
    await state.audit.submit({"kind": "key", "action": "create", "key_id": info.id,
                              "role": info.role, "by_key_id": admin.id})  # fmt: skip
    return {**_key_view(info), "key": secret}


@router.post("/v1/keys/{key_id}/revoke", tags=["keys"])
async def revoke_key(request: Request, key_id: int, admin: AdminKey) -> dict[str, Any]:
    state = request.app.state
    try:
        info = await anyio.to_thread.run_sync(keystore.revoke_key, state.engine, key_id)
    except StoreError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no API key {key_id}") from None
    state.authenticator.forget(key_id)
    await state.audit.submit({"kind": "key", "action": "revoke", "key_id": key_id,
                              "role": info.role, "by_key_id": admin.id})  # fmt: skip
    return _key_view(info)
