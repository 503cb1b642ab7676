"""The clients page (``/clients``, admin): the API keys by name and role, the blocked
clients with their reasons and expiry, and unblock. Unblocking goes through the same code
as ``DELETE /v1/clients/{id}/block`` (audited, the guard's client state reset)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bastion.dashboard.render import error_page, page
from bastion.dashboard.session import Admin, checked_form, key_of
from bastion.serve import routes_clients as api
from bastion.serve.params import IdPath
from bastion.store import keys as keystore
from bastion.store.blocks import Block

router = APIRouter(include_in_schema=False)


@dataclass(frozen=True)
class BlockRow:
    client_id: int
    client: str
    role: str
    reason: str
    request_id: str | None
    created: datetime
    expires: datetime | None
    created_by: str

    @classmethod
    def of(cls, block: Block, keys: dict[int, keystore.KeyInfo]) -> BlockRow:
        key = keys.get(block.client_id)
        return cls(
            client_id=block.client_id,
            client=(key.name if key is not None and key.name else f"key {block.client_id}"),
            role=key.role if key is not None else "?",
            reason=block.reason,
            request_id=block.request_id,
            created=block.created,
            expires=block.expires,
            created_by=block.created_by,
        )


@router.get("/clients", response_class=HTMLResponse)
async def clients(request: Request, user: Admin, unblocked: int | None = None) -> HTMLResponse:
    state = request.app.state
    keys = await anyio.to_thread.run_sync(keystore.list_keys, state.engine)
    by_id = {k.id: k for k in keys}
    blocks = [BlockRow.of(b, by_id) for b in await state.blocks.list()]
    blocked_ids = {b.client_id for b in blocks}
    return page(
        request,
        "clients.html.j2",
        user=user,
        keys=keys,
        blocks=blocks,
        blocked_ids=blocked_ids,
        unblocked=by_id.get(unblocked) if unblocked is not None else None,
        unblocked_id=unblocked,
        expire_after_s=state.settings.blocks.expire_after_s,
    )


@router.post("/clients/{client_id}/unblock", response_class=HTMLResponse)
async def unblock(request: Request, client_id: IdPath, user: Admin) -> Response:
    await checked_form(request, user)
    admin = await key_of(request, user)
    try:
        await api.delete_block(request, client_id, admin)
    except HTTPException as exc:
        return error_page(request, user, exc.status_code, "Unblock", str(exc.detail))
    return RedirectResponse(f"/clients?unblocked={client_id}", status_code=303)
