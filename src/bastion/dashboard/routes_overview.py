"""The overview (``/``) and monitor (``/monitor``, and its live fragment ``/monitor/live``
that the page's script reloads every few seconds) pages: reviewer or admin.

The overview lists each assessed model's latest run (score, gate verdict). Without a
served model (``bastion dashboard``) it shows what the store holds (reviews, blocks,
risks, assessments) and no live numbers; the monitor pages are then 404."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from bastion.dashboard import assessments as runs
from bastion.dashboard.render import error_page, is_live, page
from bastion.dashboard.routes_assessments import runs_dir
from bastion.dashboard.session import DashboardUser, Viewer
from bastion.dashboard.stats import snapshot, tracker_of
from bastion.dashboard.watch import watched_clients
from bastion.serve.history import STRENGTH_CAP, neglog10
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


async def _monitor_context(request: Request) -> dict[str, Any]:
    """The live numbers plus what the monitor page alone shows: detector score
    distributions against thresholds, drift over time, and the keys the guard watches."""
    state = request.app.state
    guard = state.runtime.guard
    history = state.history
    thresholds = dict(getattr(guard, "thresholds", {}) or {}) if guard is not None else {}
    watch = await anyio.to_thread.run_sync(watched_clients, state.engine, guard)
    live = _live_context(request)
    alpha = live["drift"].alpha
    return {
        **live,
        "drift_cap": STRENGTH_CAP,
        "drift_alpha_strength": neglog10(alpha) if alpha else STRENGTH_CAP,
        "distributions": history.distributions(thresholds),
        "score_capacity": history.score_capacity,
        "drift_points": list(history.drift),
        "drift_every_s": history.drift_every_s,
        "watch": watch,
        "guard_on": guard is not None,
        "watch_on": any(getattr(guard, part, None) is not None for part in ("extraction", "query")),
    }


@router.get("/", response_class=HTMLResponse)
async def overview(request: Request, user: Viewer) -> HTMLResponse:
    state = request.app.state
    held = await anyio.to_thread.run_sync(reviewstore.count_held, state.engine)
    blocked = len(await state.blocks.list())
    rows = await anyio.to_thread.run_sync(runs.list_runs, state.engine, runs_dir(request))
    latest = runs.latest_per_model(rows)
    runtime = getattr(state, "runtime", None)
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
        live=is_live(request),
        guard=is_live(request) and runtime.guard is not None,
        open_reviews=held,
        blocked_clients=blocked,
        high_risks=high_risks,
        latest=latest,
        attested=await anyio.to_thread.run_sync(
            lambda: {r.ref: state.attestations.status(r.out_dir) for r in latest}
        ),
        **(_live_context(request) if is_live(request) else {}),
    )


def _no_live(request: Request, user: DashboardUser) -> HTMLResponse:
    return error_page(
        request,
        user,
        404,
        "Monitor",
        "no model is served here (bastion dashboard, or the LLM firewall): the monitor is "
        "a served model's",
    )


@router.get("/monitor", response_class=HTMLResponse)
async def monitor(request: Request, user: Viewer) -> HTMLResponse:
    if not is_live(request):
        return _no_live(request, user)
    return page(request, "monitor.html.j2", user=user, **await _monitor_context(request))


@router.get("/monitor/live", response_class=HTMLResponse)
async def monitor_live(request: Request, user: Viewer) -> HTMLResponse:
    if not is_live(request):
        return _no_live(request, user)
    return page(request, "monitor_live.html.j2", user=user, **await _monitor_context(request))
