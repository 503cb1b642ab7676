"""``/v1/clients``: blocked clients (admin role; reviewers and clients get 403).

* ``GET /v1/clients/blocked`` — every active block, newest first;
* ``GET /v1/clients/{id}/block`` — the client's block (reasons, request, created, expires),
  404 when it is not blocked (an expired block is not a block);
* ``PUT /v1/clients/{id}/block`` — block by hand, with a reason and an optional expiry
  (replaces a block in force);
* ``DELETE /v1/clients/{id}/block`` — unblock; 404 when it is not blocked.

A client is an API key, ``{id}`` its key id. Blocks made and removed here are audited
(with the admin's key id) before they are answered, and take effect at once on this gateway.
Unblocking also clears the guard's extraction state for the client, so its next request is
judged afresh rather than re-blocked by the alert that blocked it.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any, Literal

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, ConfigDict, Field

from bastion.serve.auth import AdminKey
from bastion.serve.deps import AUTH_ERRORS, ClientBlocks
from bastion.serve.errors import error_responses
from bastion.serve.params import IdPath
from bastion.serve.settings import MAX_BLOCK_S, MIN_BLOCK_S
from bastion.store import blocks as blockstore
from bastion.store.blocks import Block, NotBlocked

log = logging.getLogger(__name__)
router = APIRouter(prefix="/v1/clients", tags=["clients"])


class BlockView(BaseModel):
    """A block as admins see it: why, since when, until when, by whom."""

    client_id: int
    block_id: int
    reason: str = Field(description="the reasons, joined with '; '")
    reasons: list[str]
    request_id: str | None = Field(description="the request whose verdict made the block")
    created: datetime
    expires: datetime | None = Field(description="null: until an admin removes it")
    created_by: str = Field(description="'guard', 'key N' (an admin key) or 'cli'")
    removed: datetime | None = None
    removed_by: str | None = None

    @classmethod
    def of(cls, block: Block) -> BlockView:
        return cls(
            client_id=block.client_id,
            block_id=block.id,
            reason=block.reason,
            reasons=block.reasons,
            request_id=block.request_id,
            created=block.created,
            expires=block.expires,
            created_by=block.created_by,
            removed=block.removed,
            removed_by=block.removed_by,
        )


class BlockRequest(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)

    reason: str = Field(min_length=1, max_length=2000)
    expire_after_s: float | None = Field(
        None,
        ge=MIN_BLOCK_S,
        le=MAX_BLOCK_S,
        description="default: the server's blocks.expire_after_s (1 ms .. 100 years)",
    )
    permanent: bool = Field(False, description="never expires (until an admin removes it)")


def _blocks(request: Request) -> ClientBlocks:
    return request.app.state.blocks


async def _not_blocked(request: Request, client_id: int) -> HTTPException:
    """404: the client is not blocked, or no API key has that id."""
    engine = request.app.state.engine
    info = await anyio.to_thread.run_sync(blockstore.client_info, engine, client_id)
    if info is None:
        return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no API key {client_id}")
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=f"client {client_id} is not blocked")


_NOT_FOUND = {404: "the client is not blocked (or no API key has that id)"}
_BLOCKED_ID = {"client_id": "$response.body#/client_id"}
_BLOCK_LINKS = {
    "GetBlock": {"operationId": "get_block", "parameters": _BLOCKED_ID},
    "Unblock": {"operationId": "delete_block", "parameters": _BLOCKED_ID},
}


@router.get("/blocked", response_model=list[BlockView], responses=error_responses(*AUTH_ERRORS))
async def list_blocked(request: Request, _key: AdminKey) -> list[BlockView]:
    return [BlockView.of(b) for b in await _blocks(request).list()]


@router.get(
    "/{client_id}/block",
    response_model=BlockView,
    responses=error_responses(*AUTH_ERRORS, 404, 422, describe=_NOT_FOUND),
)
async def get_block(request: Request, client_id: IdPath, _key: AdminKey) -> BlockView:
    block = await _blocks(request).get(client_id)
    if block is None:
        raise await _not_blocked(request, client_id)
    return BlockView.of(block)


@router.put(
    "/{client_id}/block",
    response_model=BlockView,
    responses={
        200: {"description": "the block in force", "links": _BLOCK_LINKS},
        **error_responses(400, *AUTH_ERRORS, 404, 422, describe={404: "no such API key"}),
    },
)
async def put_block(
    request: Request, client_id: IdPath, body: BlockRequest, admin: AdminKey
) -> BlockView:
    """Block the client by hand (replacing a block in force)."""
    state = request.app.state
    if await anyio.to_thread.run_sync(blockstore.client_info, state.engine, client_id) is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no API key {client_id}")
    block, _ = await _blocks(request).block(
        client_id,
        reasons=[body.reason],
        created_by=f"key {admin.id}",
        expire_after_s=body.expire_after_s,
        use_default_expiry=not body.permanent,
        replace=True,
    )
    await state.audit.submit(_entry("create", block, admin.id))
    return BlockView.of(block)


@router.delete(
    "/{client_id}/block",
    response_model=BlockView,
    responses=error_responses(*AUTH_ERRORS, 404, 422, describe=_NOT_FOUND),
)
async def delete_block(request: Request, client_id: IdPath, admin: AdminKey) -> BlockView:
    """Unblock the client; the answer is the removed block."""
    state = request.app.state
    try:
        block = await _blocks(request).unblock(client_id, removed_by=f"key {admin.id}")
    except NotBlocked:
        raise await _not_blocked(request, client_id) from None
    reset_guard_state(state, client_id)
    await state.audit.submit(_entry("remove", block, admin.id))
    return BlockView.of(block)


def _entry(action: Literal["create", "remove"], block: Block, admin_id: int) -> dict[str, Any]:
    return {
        "kind": "block",
        "action": action,
        "client_key_id": block.client_id,
        "block_id": block.id,
        "reasons": block.reasons,
        "request_id": block.request_id,
        "expires": block.expires.isoformat() if block.expires else None,
        "by_key_id": admin_id,
    }


def reset_guard_state(state: Any, client_id: int) -> None:
    """Forget the guard's per-client extraction state (a sticky alert would re-block the
    client on its next request). A gateway without a guard has nothing to reset."""
    guard = state.runtime.guard
    if guard is not None:
        guard.reset_client(str(client_id))
        log.info("guard state of client %d reset after unblock", client_id)
