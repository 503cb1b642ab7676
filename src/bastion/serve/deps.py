"""Shared route dependencies and answer models: the request-rate limit and the client-block
check on top of the auth aliases, and the blocked clients as the gateway keeps them
(:class:`ClientBlocks`). Error bodies are :mod:`bastion.serve.errors`.

A client (an API key) is blocked when the guard's verdict for one of its requests is
``block``, or by an admin. From then on every request it makes through
:data:`LimitedClient` / :data:`LimitedAnyKey` answers 403 ``code: blocked`` —
the request id to quote and when the block lapses, never the detectors, scores or
thresholds behind it — and each refusal is audited before it is answered. Blocks live in
the store (``bastion.store.blocks``); the gateway re-reads the active ones at most every
``auth.cache_ttl_s`` seconds, so a block or unblock made through this gateway's API takes
effect at once, one made with ``bastion clients`` or another replica within that TTL.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated, Any

import anyio.to_thread
from fastapi import Depends, HTTPException, Request, status
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import Engine

from bastion.serve.auth import AnyKey, ClientKey
from bastion.serve.errors import error_response
from bastion.serve.ratelimit import RateDecision
from bastion.store import blocks as blockstore
from bastion.store.blocks import Block
from bastion.store.keys import KeyInfo

log = logging.getLogger(__name__)


# -- answers ---------------------------------------------------------------------------------


AUTH_ERRORS = (401, 403)


def model_response(model: BaseModel, status_code: int = 200, **dump: Any) -> Response:
    """A typed answer serialised once, by pydantic (for routes that pick their status)."""
    return Response(model.model_dump_json(**dump), status_code, media_type="application/json")


# -- rate limits -------------------------------------------------------------------------------


def too_many(request: Request, decision: RateDecision) -> HTTPException:
    request.app.state.metrics.rate_limited.labels(bucket=decision.bucket).inc()
    if decision.bucket == "unavailable":
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            detail="rate limiter unavailable: retry later",
            headers={"Retry-After": decision.retry_after_header},
        )
    return HTTPException(
        status.HTTP_429_TOO_MANY_REQUESTS,
        detail=f"rate limit on {decision.bucket} exceeded: retry after "
        f"{decision.retry_after_s:.3f} s",
        headers={"Retry-After": decision.retry_after_header},
    )


async def take(request: Request, key: KeyInfo, bucket: str, cost: float) -> None:
    """Take ``cost`` tokens from the key's ``bucket`` or raise 429 (503 if Redis is down)."""
    limiter = request.app.state.limiter
    if limiter is None:
        return
    decision = await limiter.take(str(key.id), bucket, cost)
    if not decision.allowed:
        raise too_many(request, decision)


# -- blocked clients ---------------------------------------------------------------------------


def refusal(request_id: str, block: Block) -> Response:
    """What a blocked client is told (403, ``code: blocked``): blocked by policy, the request
    id to quote, until when. No detector, score or threshold is named."""
    return error_response(
        status.HTTP_403_FORBIDDEN,
        "request blocked by policy; contact the service operator and quote request id "
        f"{request_id}",
        code="blocked",
        request_id=request_id,
        blocked_until=block.expires,
    )


class ClientBlocked(Exception):
    """Raised by the client dependencies; the app answers it with :func:`refusal`."""

    def __init__(self, request_id: str, block: Block) -> None:
        super().__init__(f"client blocked (request {request_id})")
        self.request_id = request_id
        self.block = block


async def client_blocked_handler(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ClientBlocked)
    return refusal(exc.request_id, exc.block)


class ClientBlocks:
    """The active blocks, read from the store and kept for ``cache_ttl_s`` seconds.

    ``clock`` gives the current UTC time (tests move it to make blocks lapse); expiry is
    checked against it on every request, whatever the cache holds."""

    def __init__(
        self,
        engine: Engine,
        *,
        expire_after_s: float | None,
        cache_ttl_s: float = 2.0,
        clock: Callable[[], datetime] = blockstore.utcnow,
    ) -> None:
        self.engine = engine
        self.expire_after_s = expire_after_s
        self.cache_ttl_s = cache_ttl_s
        self.clock = clock
        self._active: dict[int, Block] = {}
        self._loaded_at = float("-inf")
        self._changes = 0  # local blocks/unblocks: a reload racing one keeps the local view
        self._lock = asyncio.Lock()

    def expiry(self, now: datetime, after_s: float | None) -> datetime | None:
        return None if after_s is None else now + timedelta(seconds=after_s)

    async def _refresh(self) -> None:
        async with self._lock:
            if time.monotonic() - self._loaded_at < self.cache_ttl_s:
                return
            changes, now = self._changes, self.clock()
            rows = await anyio.to_thread.run_sync(
                lambda: blockstore.list_blocks(self.engine, now=now)
            )
            if changes == self._changes:
                self._active = {b.client_id: b for b in rows}
                self._loaded_at = time.monotonic()

    async def active(self, client_id: int) -> Block | None:
        """The client's active block, or None (expired blocks count as none)."""
        if time.monotonic() - self._loaded_at >= self.cache_ttl_s:
            await self._refresh()
        block = self._active.get(client_id)
        if block is not None and not block.active_at(self.clock()):
            return None
        return block

    async def list(self) -> list[Block]:
        now = self.clock()
        return await anyio.to_thread.run_sync(lambda: blockstore.list_blocks(self.engine, now=now))

    async def get(self, client_id: int) -> Block | None:
        """Straight from the store (the admin's view, never the cache)."""
        now = self.clock()
        return await anyio.to_thread.run_sync(
            lambda: blockstore.get_block(self.engine, client_id, now=now)
        )

    def _remember(self, block: Block | None, client_id: int) -> None:
        self._changes += 1
        if block is None:
            self._active.pop(client_id, None)
        else:
            self._active[client_id] = block

    async def block(
        self,
        client_id: int,
        *,
        reasons: list[str],
        created_by: str,
        request_id: str | None = None,
        expire_after_s: float | None = None,
        use_default_expiry: bool = True,
        replace: bool = False,
    ) -> tuple[Block, bool]:
        """Store a block (or find the one in force); returns ``(block, created)``. The
        expiry is ``expire_after_s``, or ``blocks.expire_after_s`` when that is None and
        ``use_default_expiry``."""
        now = self.clock()
        after = expire_after_s
        if after is None and use_default_expiry:
            after = self.expire_after_s
        block, created = await anyio.to_thread.run_sync(
            lambda: blockstore.block_client(
                self.engine,
                client_id,
                reasons=reasons,
                created_by=created_by,
                request_id=request_id,
                expires=self.expiry(now, after),
                replace=replace,
                now=now,
            )
        )
        self._remember(block, client_id)
        if created:
            until = block.expires.isoformat() if block.expires else "removed"
            log.warning("client %d blocked by %s until %s", client_id, created_by, until)
        return block, created

    async def unblock(self, client_id: int, *, removed_by: str) -> Block:
        """Remove the client's block; raises ``NotBlocked`` when it has none."""
        now = self.clock()
        try:
            block = await anyio.to_thread.run_sync(
                lambda: blockstore.unblock_client(
                    self.engine, client_id, removed_by=removed_by, now=now
                )
            )
        except blockstore.NotBlocked:
            self._remember(None, client_id)  # the store has none: neither should the cache
            raise
        self._remember(None, client_id)
        return block


async def refuse_if_blocked(request: Request, key: KeyInfo) -> None:
    """403 (audited first) when the key is blocked."""
    state = request.app.state
    block = await state.blocks.active(key.id)
    if block is None:
        return
    request_id = uuid.uuid4().hex
    await state.audit.submit(
        {
            "kind": "refused",
            "request_id": request_id,
            "key_id": key.id,
            "block_id": block.id,
            "method": request.method,
            "path": request.url.path,
            "reason": "client blocked",
        }
    )
    raise ClientBlocked(request_id, block)


async def client_request_limited(request: Request, key: ClientKey) -> KeyInfo:
    """A client (or admin) key that is not blocked; it pays a request token first, so a
    blocked client cannot flood the audit log with refusals."""
    await take(request, key, "requests", 1)
    await refuse_if_blocked(request, key)
    return key


async def any_request_limited(request: Request, key: AnyKey) -> KeyInfo:
    """Any valid key; client keys pay a request token (reviewers and admins do not) and are
    refused while blocked."""
    if key.role == "client":
        await take(request, key, "requests", 1)
        await refuse_if_blocked(request, key)
    return key


LimitedClient = Annotated[KeyInfo, Depends(client_request_limited)]
LimitedAnyKey = Annotated[KeyInfo, Depends(any_request_limited)]
