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

from bastion.serve.errors import install_error_handlers
from bastion.serve.metrics import make_metrics
from bastion.serve.records import open_records
from bastion.serve.settings import ServeSettings


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    state = app.state
    settings: ServeSettings = state.settings
    state.runtime = None  # no model: the pages that need one say so
    state.input_spec = None
    await open_records(state, settings, read_only=True)
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
