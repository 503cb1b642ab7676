"""The firewall gateway: ``create_firewall_app(settings, firewall_settings, profile)``.

The same gateway as for a classifier, with the LLM firewall where the model was: the
gateway's auth (API keys, roles), its rate limiter (buckets ``requests`` and ``tokens``),
client blocks, review queue, audit sink, error handlers, Prometheus metrics and its
operations, review, audit and client routes; the firewall's routes
(:mod:`bastion.llm.firewall.routes`) instead of ``/v1/predict``. Nothing is opened before
the app starts: the upstream client, the store, the limiter and the audit log are opened in
the lifespan and closed when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI

from bastion.llm.firewall.attack_state import AttackState, RedisAttackState
from bastion.llm.firewall.config import FirewallSettings, upstream_key
from bastion.llm.firewall.errors import OpenAIErrorShape
from bastion.llm.firewall.metrics import make_firewall_metrics
from bastion.llm.firewall.scanners import Firewall
from bastion.llm.firewall.upstream import Upstream
from bastion.llm.profile import AppProfile
from bastion.serve.deps import ClientBlocked, client_blocked_handler
from bastion.serve.errors import install_error_handlers
from bastion.serve.metrics import MetricsMiddleware, make_metrics
from bastion.serve.ratelimit import BucketSpec, LocalRateLimiter, RedisRateLimiter
from bastion.serve.records import open_records
from bastion.serve.settings import ServeSettings
from bastion.serve.validation import BodySizeLimitMiddleware

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class UpstreamModel:
    name: str
    form: str = "llm-upstream"


class AttackStateReset:
    """What the clients routes call on unblock (``guard.reset_client``): forget the key's
    injection attempts, so an unblocked client starts afresh."""

    def __init__(self, state: AttackState | RedisAttackState) -> None:
        self.state = state

    def reset_client(self, client_id: str) -> None:
        self.state.forget(int(client_id))


@dataclass(frozen=True)
class FirewallRuntime:
    """What the gateway's operations and clients routes read from ``app.state.runtime``:
    the upstream in place of a model, the firewall's attack state in place of a guard, and
    no drift test."""

    loaded: UpstreamModel
    guard: AttackStateReset

    def drift_status(self) -> None:
        return None


def make_limiter(settings: ServeSettings, fw: FirewallSettings) -> Any:
    rl = settings.rate_limit
    buckets = {
        "requests": BucketSpec(rl.requests_per_s, rl.requests_burst),
        "tokens": BucketSpec(fw.tokens_per_s, fw.tokens_burst),
    }
    if settings.redis_url:
        return RedisRateLimiter(
            settings.redis_url,
            buckets,
            prefix=f"{settings.redis_prefix}:rl",
            on_error=rl.on_redis_error,
        )
    return LocalRateLimiter(buckets)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: ServeSettings = app.state.settings
    fw: FirewallSettings = app.state.firewall_settings
    state = app.state
    state.upstream = Upstream(fw.base_url, api_key=upstream_key(fw), timeout_s=fw.timeout_s)
    await open_records(state, settings)
    state.limiter, state.limiter_kind = None, "off"
    if settings.rate_limit.enabled:
        state.limiter = make_limiter(settings, fw)
        if isinstance(state.limiter, RedisRateLimiter):
            await state.limiter.ping()
            state.limiter_kind = "redis"
        else:
            state.limiter_kind = "local"
    state.recent = None
    escalation = asyncio.create_task(state.reviews.run_escalation(settings.reviews.check_every_s))
    log.info("LLM firewall in front of %s (rate limit %s)", fw.base_url, state.limiter_kind)
    try:
        yield
    finally:
        escalation.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await escalation
        await state.upstream.aclose()
        await state.audit.aclose()
        if state.limiter is not None:
            await state.limiter.aclose()
        if isinstance(state.attack_state, RedisAttackState):
            state.attack_state.close()
        state.engine.dispose()


def create_firewall_app(
    settings: ServeSettings, fw: FirewallSettings, profile: AppProfile | None = None
) -> FastAPI:
    """The gateway with the LLM firewall in front of ``fw.upstream`` (opened on start)."""
    from bastion.llm.firewall import routes
    from bastion.serve import routes_admin, routes_audit, routes_clients, routes_reviews
    from bastion.serve.app import _operation_id

    app = FastAPI(
        title="Bastion LLM firewall",
        version="0.1.0",
        description="An OpenAI-compatible chat-completions proxy: API keys, rate limits in "
        "requests and tokens, input and output scanners, human review and a tamper-evident "
        "audit log.",
        lifespan=lifespan,
        generate_unique_id_function=_operation_id,
        docs_url=None,
        redoc_url=None,
    )
    attack_state: AttackState | RedisAttackState
    if settings.redis_url:  # replicas count a key's attempts together
        attack_state = RedisAttackState(
            settings.redis_url,
            max_attempts=fw.attack_state.max_attempts,
            window_s=fw.attack_state.window_s,
            prefix=f"{settings.redis_prefix}:fw:attack",
        )
    else:
        attack_state = AttackState(
            max_attempts=fw.attack_state.max_attempts, window_s=fw.attack_state.window_s
        )
    app.state.settings = settings
    app.state.firewall_settings = fw
    app.state.firewall = Firewall(fw, profile)
    app.state.attack_state = attack_state
    app.state.metrics = make_metrics()
    app.state.fw_metrics = make_firewall_metrics(app.state.metrics.registry)
    app.state.runtime = FirewallRuntime(
        UpstreamModel(f"upstream {fw.base_url}"), AttackStateReset(attack_state)
    )
    install_error_handlers(app)
    app.add_exception_handler(ClientBlocked, client_blocked_handler)
    app.include_router(routes.router)
    app.include_router(routes_reviews.router)
    app.include_router(routes_audit.router)
    app.include_router(routes_admin.router)
    app.include_router(routes_clients.router)
    if settings.dashboard.enabled:  # reviewers decide held chats in the browser too
        from bastion.dashboard import install as install_dashboard

        install_dashboard(app)
        app.state.dashboard_live = False  # no predict route: no monitor, no live numbers
    app.add_middleware(BodySizeLimitMiddleware, limit=settings.limits.max_body_bytes)
    app.add_middleware(OpenAIErrorShape)  # outside the body limit: its 413 is reshaped too
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app
