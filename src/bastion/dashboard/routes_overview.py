"""The overview (``/``) and monitor (``/monitor``, and its live fragment ``/monitor/live``
that the page's script reloads every few seconds) pages: reviewer or admin."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from bastion.dashboard.render import page
from bastion.dashboard.session import Viewer
from bastion.dashboard.stats import snapshot, tracker_of
from bastion.serve.risks import NoRegister
from bastion.serve.routes_admin import refresh_drift
from bastion.serve.routes_risks import registry
from bastion.store import reviews as reviewstore

router = APIRouter(include_in_schema=False)
RECENT_SHOWN = 10


def _live_context(request: Request) -> dict[str, Any]:
    state = request.app.state
    return {
        "stats": snapshot(state.metrics, tracker_of(state)),
        "drift": refresh_drift(state),
        "recent": list(reversed(state.recent or []))[:RECENT_SHOWN],
    }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, user: Viewer) -> HTMLResponse:
    state = request.app.state
    held = await anyio.to_thread.run_sync(reviewstore.count_held, state.engine)
    blocked = len(await state.blocks.list())
    try:
        register = await registry(request).read()
        high_risks: int | None = sum(
            r.priority == "high" and r.status == "open" for r in register.risks
        )
    except NoRegister:
        high_risks = None
    return page(
        request,
        "overview.html.j2",
        user=user,
        guard=state.runtime.guard is not None,
        open_reviews=held,
        blocked_clients=blocked,
        high_risks=high_risks,
        **_live_context(request),
    )


@router.get("/monitor", response_class=HTMLResponse)
async def monitor(request: Request, user: Viewer) -> HTMLResponse:
    return page(request, "monitor.html.j2", user=user, **_live_context(request))


@router.get("/monitor/live", response_class=HTMLResponse)
async def monitor_live(request: Request, user: Viewer) -> HTMLResponse:
    return page(request, "monitor_live.html.j2", user=user, **_live_context(request))
