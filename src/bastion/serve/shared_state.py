"""The guard's stateful monitors shared by the gateway's replicas (``redis_url`` set).

:func:`open_shared_state` attaches a :class:`~bastion.guard.shared.RedisClientState` to the
loaded guard: every replica that serves the same model with the same ``redis_prefix``
feeds its PRADA, similarity, coverage and drift monitors from one Redis stream
(``<prefix>:guard:<model sha256[:16]>``), so an attacker spread over replicas is seen
whole (see :mod:`bastion.guard.shared`). Without ``redis_url`` nothing is attached and the
guard keeps its state in process, with no Redis call on the request path.

When Redis cannot be reached mid-flight, guarded requests answer 503 ``code:
unavailable`` with ``Retry-After`` (:func:`install`): the guard never decides on a
replica's partial view.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, status
from fastapi.responses import Response

from bastion.guard.shared import RedisClientState, SharedStateUnavailable
from bastion.serve.errors import error_response
from bastion.serve.settings import ServeSettings

log = logging.getLogger(__name__)


def stream_name(prefix: str, model_sha256: str) -> str:
    """The Redis stream of one model's observations (replicas of another model never mix)."""
    return f"{prefix}:guard:{model_sha256.removeprefix('sha256:')[:16]}"


async def open_shared_state(settings: ServeSettings, runtime: Any) -> RedisClientState | None:
    """Share the guard's monitor state through Redis when ``redis_url`` is set and the guard
    has stateful monitors; replays the stream first (a replica starts with the deployment's
    state). None when nothing is shared."""
    guard = runtime.guard
    cfg = settings.shared_state
    if not settings.redis_url or not cfg.enabled or guard is None:
        return None
    if not hasattr(guard, "share_state"):
        return None
    store = RedisClientState(
        settings.redis_url,
        stream_name(settings.redis_prefix, runtime.model_sha256),
        maxlen=cfg.max_entries,
        timeout_s=cfg.timeout_s,
    )
    await anyio.to_thread.run_sync(store.ping)
    await anyio.to_thread.run_sync(guard.share_state, store)
    if guard.shared is None:  # no stateful monitor: nothing to share
        store.close()
        return None
    log.info("guard state shared through Redis stream %s", store.stream)
    return store


async def _unavailable(_request: Request, exc: Exception) -> Response:
    return error_response(
        status.HTTP_503_SERVICE_UNAVAILABLE,
        "the guard's shared state is unavailable: retry later",
        headers={"Retry-After": "1"},
    )


def install(app: FastAPI) -> None:
    """Answer :class:`SharedStateUnavailable` with 503 (never a 500, never unguarded)."""
    app.add_exception_handler(SharedStateUnavailable, _unavailable)
