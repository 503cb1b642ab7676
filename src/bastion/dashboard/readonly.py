"""The read-only dashboard of ``bastion dashboard --runs DIR --db URL``: the dashboard's
pages over a store, with no model, no guard and no JSON API.

It opens the store (keys, sessions, reviews, blocks), the audit log and the optional risk
register in its lifespan, as the gateway does; what it cannot have without a served model
(the monitor, live request rates, drift) is left out. Every edit — deciding a review,
unblocking a client, editing a risk — is refused with the 403 page whatever the role
(:func:`bastion.dashboard.app.refuse_writes`); logging in and out still work, since a
session is how roles are enforced.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI

from bastion.serve.audit_adapter import open_audit
from bastion.serve.auth import Authenticator
from bastion.serve.deps import ClientBlocks
from bastion.serve.errors import install_error_handlers
from bastion.serve.metrics import make_metrics
from bastion.serve.reviews import ReviewQueue
from bastion.serve.settings import ServeSettings
from bastion.store.db import default_url, make_engine


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings: ServeSettings = state.settings
    state.runtime = None  # no model: the pages that need one say so
    state.input_spec = None
    state.engine = make_engine(settings.db_url)
    state.authenticator = Authenticator(state.engine, ttl_s=settings.auth.cache_ttl_s, enabled=True)
    au = settings.audit
    state.audit = await open_audit(
        au.url or settings.db_url or default_url(),
        enabled=au.enabled,
        key_file=au.key_file,
        checkpoint_every=0,  # reading only: never sign a new head here
    )
    state.reviews = ReviewQueue(
        state.engine, state.metrics, state.audit, escalate_after_s=settings.reviews.escalate_after_s
    )
    state.blocks = ClientBlocks(
        state.engine,
        expire_after_s=settings.blocks.expire_after_s,
        cache_ttl_s=settings.auth.cache_ttl_s,
    )
    state.recent = None
    try:
        yield
    finally:
        await state.audit.aclose()
        state.engine.dispose()


def create_readonly_app(settings: ServeSettings, runs_dir: Path | None) -> FastAPI:
    """The read-only dashboard over ``settings.db_url`` and the run folders in ``runs_dir``
    (nothing is opened until the app starts)."""
    from bastion.dashboard.app import install

    app = FastAPI(
        title="Bastion dashboard (read-only)",
        version="0.1.0",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = make_metrics()  # login refusals are counted, nothing else
    app.state.dashboard_runs_dir = runs_dir
    install_error_handlers(app)
    install(app, read_only=True)
    return app
