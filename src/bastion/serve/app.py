"""The gateway application: ``create_app(settings)``.

Nothing is loaded at import or in ``create_app``: the model, the guard, the store, the
rate limiter and the audit sink are opened in the lifespan and kept in ``app.state``, and
closed when the server stops. Errors never leak a traceback: every error answers the one
:class:`~bastion.serve.errors.ErrorResponse` (``detail`` says what was wrong, ``code`` its
kind); a bug answers 500 ``{"detail": "internal server error", "code": "internal",
"request_id": ...}`` and is logged with its traceback.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections import deque
from collections.abc import AsyncIterator

import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute

from bastion.serve.batching import MicroBatcher
from bastion.serve.deps import ClientBlocked, client_blocked_handler
from bastion.serve.errors import error_response, install_error_handlers
from bastion.serve.history import MonitorHistory
from bastion.serve.metrics import MetricsMiddleware, make_metrics
from bastion.serve.openapi import install_openapi
from bastion.serve.ratelimit import RedisRateLimiter, make_rate_limiter
from bastion.serve.records import open_records
from bastion.serve.runtime import Runtime
from bastion.serve.settings import ServeSettings
from bastion.serve.shared_state import install as install_shared_state
from bastion.serve.shared_state import open_shared_state
from bastion.serve.validation import BodySizeLimitMiddleware, InputError, RequestSpec

log = logging.getLogger(__name__)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServeSettings = app.state.settings
    state = app.state
    if torch.get_num_threads() != settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    # `bastion serve` loads the runtime before the server starts (errors as one line)
    state.runtime = getattr(state, "runtime", None) or Runtime.from_settings(settings)
    state.input_spec = RequestSpec.from_spec(
        state.runtime.input_spec,
        max_batch=settings.limits.max_batch,
        tolerance=settings.limits.bounds_tolerance,
    )
    await open_records(state, settings)
    rl = settings.rate_limit
    state.limiter = None
    state.limiter_kind = "off"
    if rl.enabled:
        state.limiter = make_rate_limiter(
            settings.redis_url,
            requests_per_s=rl.requests_per_s,
            requests_burst=rl.requests_burst,
            samples_per_s=rl.samples_per_s,
            samples_burst=rl.samples_burst,
            on_redis_error=rl.on_redis_error,
            prefix=f"{settings.redis_prefix}:rl",
        )
        if isinstance(state.limiter, RedisRateLimiter):
            await state.limiter.ping()
            state.limiter_kind = "redis"
        else:
            state.limiter_kind = "local"
    state.shared_state = await open_shared_state(settings, state.runtime)
    state.recent = deque(maxlen=settings.recent_decisions) if settings.recent_decisions else None
    state.history = MonitorHistory(
        score_capacity=settings.dashboard.score_history,
        drift_every_s=settings.dashboard.drift_sample_s,
    )
    state.batcher = MicroBatcher(
        state.runtime,
        max_samples=settings.batch_max_samples,
        # with shared state a small pass also stays on the loop: its Redis exchange is one
        # pipelined append and one read (~0.2 ms locally), where the hop to a thread cost a
        # third of the throughput; inline_max_samples: 0 moves every pass off the loop
        # (an unresponsive Redis then stalls passes, not the loop, for shared_state.timeout_s)
        inline_max_samples=settings.inline_max_samples,
        max_wait_s=settings.batch_wait_ms / 1000,
        on_pass=state.metrics.pass_requests.observe,
    )
    await state.batcher.start()
    escalation = asyncio.create_task(state.reviews.run_escalation(settings.reviews.check_every_s))
    drift_sampler = asyncio.create_task(state.history.run_drift_sampler(state.runtime.drift_status))
    gc.collect()
    gc.freeze()  # start-up objects (torch, the model) leave the collector's scans: shorter pauses
    log.info(
        "serving %s (guard %s, rate limit %s)",
        state.runtime.loaded.name,
        "on" if state.runtime.guard is not None else "off",
        state.limiter_kind,
    )
    try:
        yield
    finally:
        for task in (escalation, drift_sampler):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await state.batcher.stop()
        await state.audit.aclose()
        if state.limiter is not None:
            await state.limiter.aclose()
        if state.shared_state is not None:
            state.shared_state.close()
        state.engine.dispose()


async def _input_error(_request: Request, exc: Exception) -> Response:
    status = exc.status if isinstance(exc, InputError) else 400
    return error_response(status, str(exc))


def _operation_id(route: APIRoute) -> str:
    """OpenAPI operation ids are the route functions' names (the links refer to them)."""
    return route.name


def create_app(settings: ServeSettings) -> FastAPI:
    """Build the gateway for ``settings`` (nothing is loaded until the app starts)."""
    from bastion.dashboard import install as install_dashboard
    from bastion.serve import (
        routes_admin,
        routes_audit,
        routes_clients,
        routes_predict,
        routes_reviews,
        routes_risks,
    )

    app = FastAPI(
        title="Bastion gateway",
        version="0.1.0",
        description="Guarded model serving: API keys, rate limits, input validation, runtime "
        "detectors, human review and a tamper-evident audit log.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,  # Swagger UI and ReDoc load scripts from a CDN; /openapi.json stays
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = make_metrics()
    install_error_handlers(app)
    app.add_exception_handler(InputError, _input_error)
    app.add_exception_handler(ClientBlocked, client_blocked_handler)
    install_shared_state(app)
    install_openapi(app)
    app.include_router(routes_predict.router)
    app.include_router(routes_reviews.router)
    app.include_router(routes_audit.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_clients.router)
    app.include_router(routes_risks.router)
    if settings.dashboard.enabled:
        install_dashboard(app)
    # Outermost last: metrics see every answer, including the body-limit's 413.
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.limits.max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
