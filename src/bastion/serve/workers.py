"""``bastion serve --workers N``: N gateway processes accepting on one listening socket.

One Python process runs its event loop, the model and the guard on one core; a second
process uses the next core. The parent binds the socket (so a port in use is still one
line), checks everything once as a single-process start would, then hands the socket to N
worker processes started by uvicorn's supervisor (spawned, not forked: each loads the model
and the guard itself; a worker that dies is replaced, one that cannot start stops them all).
Each worker builds the app from the same settings, passed as JSON in :data:`ENV`.

What defines policy is shared exactly as between replicas on several machines: rate limits,
the guard's per-client and cross-client state, blocks (Redis and the record store), keys,
reviews and the audit log (the record store: SQLite serialises the workers' appends with
``BEGIN IMMEDIATE``, PostgreSQL with its row lock). So more than one worker needs
``redis_url`` whenever rate limits or the guard are on (:func:`check_workers`). What stays
per worker: Prometheus counters (``/metrics`` answers the worker that took the connection),
the dashboard's live monitor and recent decisions.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from fastapi import FastAPI

from bastion.errors import ConfigError
from bastion.serve.settings import ServeSettings

ENV = "BASTION_WORKER_SETTINGS"


def check_workers(settings: ServeSettings) -> None:
    """More than one worker shares its policy state through Redis: refuse without it."""
    workers = settings.workers
    if workers <= 1:
        return
    stateful = [
        what
        for what, on in (
            ("rate limits", settings.rate_limit.enabled),
            ("the guard's client state", settings.guard.enabled),
        )
        if on
    ]
    if stateful and not settings.redis_url:
        raise ConfigError(
            f"--workers {workers} shares {' and '.join(stateful)} between the workers through "
            "Redis: give --redis-url (or serve with one worker)"
        )


def worker_app() -> FastAPI:
    """The app of one worker (uvicorn's factory): the parent's settings from :data:`ENV`."""
    from bastion.serve.app import create_app

    blob = os.environ.get(ENV)
    if not blob:
        raise ConfigError(f"a gateway worker needs its settings in ${ENV}: start it with --workers")
    return create_app(ServeSettings.model_validate_json(blob))


def run_workers(settings: ServeSettings, sock: socket.socket, **uvicorn_options: Any) -> None:
    """Serve on ``sock`` with ``settings.workers`` processes until SIGINT/SIGTERM (then each worker
    shuts down gracefully: its pending audit entries are committed). Raises ConfigError when
    a worker failed to start (its error is in the log above)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    os.environ[ENV] = settings.model_dump_json()
    config = uvicorn.Config(
        "bastion.serve.workers:worker_app",
        factory=True,
        workers=settings.workers,
        server_header=False,
        **uvicorn_options,
    )
    supervisor = Multiprocess(config, sockets=[sock])
    try:
        supervisor.run()
    finally:
        sock.close()
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise ConfigError("a gateway worker failed to start (see its error above)")
