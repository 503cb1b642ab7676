"""Prometheus metrics of one gateway app, in its own CollectorRegistry (so several apps in
one process, as in tests, never share or clash), and the ASGI middleware that counts
requests and times them by route template."""

from __future__ import annotations

import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
)


@dataclass
class ServeMetrics:
    registry: CollectorRegistry
    requests: Counter
    latency: Histogram
    verdicts: Counter
    samples: Counter
    rate_limited: Counter
    auth_failures: Counter
    held: Counter
    escalated: Counter
    pending_holds: Gauge
    drift_p_value: Gauge
    drift_alert: Gauge
    audit_seconds: Histogram
    pass_requests: Histogram


def make_metrics() -> ServeMetrics:
    reg = CollectorRegistry(auto_describe=True)
    return ServeMetrics(
        registry=reg,
        requests=Counter(
            "bastion_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=reg,
        ),
        latency=Histogram(
            "bastion_request_latency_seconds",
            "Time to answer, by route template",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        verdicts=Counter(
            "bastion_verdicts", "Guard verdicts per predict request", ["verdict"], registry=reg
        ),
        samples=Counter("bastion_samples", "Samples predicted", registry=reg),
        rate_limited=Counter(
            "bastion_rate_limited",
            "Requests refused by a rate limit (429)",
            ["bucket"],
            registry=reg,
        ),
        auth_failures=Counter(
            "bastion_auth_failures", "Refused credentials (401/403)", ["reason"], registry=reg
        ),
        held=Counter("bastion_holds", "Requests held for human review", registry=reg),
        escalated=Counter(
            "bastion_holds_escalated",
            "Held requests that waited past reviews.escalate_after_s",
            registry=reg,
        ),
        pending_holds=Gauge(
            "bastion_holds_pending", "Held requests awaiting a reviewer", registry=reg
        ),
        drift_p_value=Gauge(
            "bastion_drift_p_value",
            "p-value of the input drift test (1 = no evidence of drift)",
            registry=reg,
        ),
        drift_alert=Gauge("bastion_drift_alert", "1 while the drift test alerts", registry=reg),
        audit_seconds=Histogram(
            "bastion_audit_commit_seconds",
            "Time from submitting an audit entry to its being durable",
            buckets=LATENCY_BUCKETS,
            registry=reg,
        ),
        pass_requests=Histogram(
            "bastion_pass_requests",
            "Predict requests served by one model and guard pass (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=reg,
        ),
    )


class MetricsMiddleware:
    """Counts and times every HTTP request under its route template (``/v1/tickets/{ticket}``,
    not the concrete path, so label cardinality stays bounded; unmatched paths are ``other``)."""

    def __init__(self, app: ASGIApp, metrics: ServeMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status_code = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status_code
            if message["type"] == "http.response.start":
                status_code = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            self.metrics.requests.labels(template, scope["method"], str(status_code)).inc()
            self.metrics.latency.labels(template).observe(time.perf_counter() - start)
