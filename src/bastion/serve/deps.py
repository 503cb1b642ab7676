"""Shared route dependencies: the request-rate limit on top of the auth aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from bastion.serve.auth import AnyKey, ClientKey
from bastion.serve.ratelimit import RateDecision
from bastion.store.keys import KeyInfo


def too_many(request: Request, decision: RateDecision) -> HTTPException:
    request.app.state.metrics.rate_limited.labels(bucket=decision.bucket).inc()
    if decision.bucket == "unavailable":
        return HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE, detail="rate limiter unavailable: retry later",
            headers={"Retry-After": decision.retry_after_header},
        )  # fmt: skip
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


async def client_request_limited(request: Request, key: ClientKey) -> KeyInfo:
    await take(request, key, "requests", 1)
    return key


async def any_request_limited(request: Request, key: AnyKey) -> KeyInfo:
    """Any valid key; client keys pay a request token (reviewers and admins do not)."""
    if key.role == "client":
        await take(request, key, "requests", 1)
    return key


LimitedClient = Annotated[KeyInfo, Depends(client_request_limited)]
LimitedAnyKey = Annotated[KeyInfo, Depends(any_request_limited)]
