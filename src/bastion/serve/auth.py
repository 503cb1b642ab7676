"""API-key authentication and role checks, as route dependencies.

The key comes in ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``. A missing,
unknown or revoked key answers 401 (with ``WWW-Authenticate: Bearer``); a valid key of
the wrong role answers 403. Routes declare what they need with the ``Annotated`` aliases
:data:`ClientKey`, :data:`ReviewerKey`, :data:`AdminKey` and :data:`AnyKey`.

Looked-up keys are cached in memory for ``auth.cache_ttl_s`` seconds (a revocation made
through the API takes effect at once; one made with ``bastion keys revoke`` in another
process within that TTL).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated

import anyio.to_thread
from fastapi import Depends, HTTPException, Request, Security, status
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine

from bastion.store.keys import KeyInfo, hash_key, lookup_key

ANONYMOUS = KeyInfo(
    id=0,
    name="anonymous (auth disabled)",
    role="admin",
    prefix="",
    created=datetime(1970, 1, 1, tzinfo=UTC),
)
_CACHE_LIMIT = 10_000
# Declared for the OpenAPI document (its security schemes); the key is read by presented_key.
_BEARER = HTTPBearer(
    auto_error=False, scheme_name="bearer", description="Authorization: Bearer <key>"
)
_API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, scheme_name="apiKey")


class Authenticator:
    """Resolves presented keys to records, with a small TTL cache keyed by digest."""

    def __init__(self, engine: Engine, *, ttl_s: float = 2.0, enabled: bool = True) -> None:
        self.engine = engine
        self.ttl_s = ttl_s
        self.enabled = enabled
        self._cache: dict[str, tuple[KeyInfo | None, float]] = {}

    async def resolve(self, key: str) -> KeyInfo | None:
        digest = hash_key(key)
        now = time.monotonic()
        hit = self._cache.get(digest)
        if hit is not None and hit[1] > now:
            return hit[0]
        info = await anyio.to_thread.run_sync(lookup_key, self.engine, key)
        if self.ttl_s > 0:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[digest] = (info, now + self.ttl_s)
        return info

    def forget(self, key_id: int | None = None) -> None:
        """Drop cached records (all, or those of one key id) after a change."""
        if key_id is None:
            self._cache.clear()
            return
        stale = [
            d for d, (info, _) in self._cache.items() if info is not None and info.id == key_id
        ]
        for digest in stale:
            del self._cache[digest]


def presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        return None
    key = request.headers.get("x-api-key")
    return key.strip() if key else None


def _unauthorized(request: Request, reason: str, detail: str) -> HTTPException:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.auth_failures.labels(reason=reason).inc()
    return HTTPException(
        status.HTTP_401_UNAUTHORIZED, detail=detail, headers={"WWW-Authenticate": "Bearer"}
    )


async def current_key(
    request: Request,
    _bearer: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
    _api_key: Annotated[str | None, Security(_API_KEY)] = None,
) -> KeyInfo:
    """Dependency: the caller's key record; 401 when missing, unknown or revoked."""
    auth: Authenticator = request.app.state.authenticator
    if not auth.enabled:
        return ANONYMOUS
    key = presented_key(request)
    if not key:
        raise _unauthorized(
            request, "missing", "missing API key: send 'Authorization: Bearer <key>' or 'X-API-Key'"
        )
    info = await auth.resolve(key)
    if info is None:
        raise _unauthorized(request, "unknown", "invalid API key")
    if not info.active:
        raise _unauthorized(request, "revoked", "this API key was revoked")
    request.state.key = info
    return info


def require_roles(*roles: str) -> Callable[..., Awaitable[KeyInfo]]:
    """A dependency that lets through only keys of one of ``roles`` (else 403)."""

    async def dependency(
        request: Request, key: Annotated[KeyInfo, Depends(current_key)]
    ) -> KeyInfo:
        if key.role not in roles:
            metrics = getattr(request.app.state, "metrics", None)
            if metrics is not None:
                metrics.auth_failures.labels(reason="role").inc()
            raise HTTPException(
                status.HTTP_403_FORBIDDEN,
                detail=f"this route needs a key with role {' or '.join(roles)}; yours is {key.role}",
            )
        return key

    dependency.__name__ = f"require_{'_or_'.join(roles)}"
    return dependency


ClientKey = Annotated[KeyInfo, Depends(require_roles("client", "admin"))]
ReviewerKey = Annotated[KeyInfo, Depends(require_roles("reviewer", "admin"))]
AdminKey = Annotated[KeyInfo, Depends(require_roles("admin"))]
AnyKey = Annotated[KeyInfo, Depends(current_key)]
