"""What the overview and monitor pages show of the gateway's Prometheus metrics: the predict
request rate (over the last sampling interval, and since start), p50/p99 latency from the
latency histogram, the verdict mix, holds and auth failures."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from bastion.serve.metrics import ServeMetrics

PREDICT_ROUTE = "/v1/predict"
VERDICTS = ("allow", "flag", "hold", "block")


@dataclass(frozen=True)
class VerdictShare:
    verdict: str
    count: int
    share: float  # 0..1 of all verdicts


@dataclass(frozen=True)
class MonitorStats:
    predict_requests: int
    requests_per_s: float  # over the latest interval between two looks (or since start)
    requests_per_s_since_start: float
    p50_ms: float | None
    p99_ms: float | None
    verdicts: list[VerdictShare]
    samples: int
    holds: int
    pending_holds: int
    auth_failures: int
    rate_limited: int
    uptime_s: float


@dataclass
class RateTracker:
    """Remembers (time, total) looks to turn counters into a rate; one per app."""

    started: float = field(default_factory=time.monotonic)
    looks: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=64))
    window_s: float = 60.0

    def rate(self, total: int, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        self.looks.append((now, total))
        while len(self.looks) > 2 and now - self.looks[0][0] > self.window_s:
            self.looks.popleft()
        t0, n0 = self.looks[0]
        if now - t0 < 1.0:  # too short a view: the average since start
            elapsed = max(now - self.started, 1e-9)
            return total / elapsed
        return (total - n0) / (now - t0)


def _samples(metrics: ServeMetrics) -> list[Any]:
    return [s for family in metrics.registry.collect() for s in family.samples]


def quantile_ms(buckets: list[tuple[float, float]], q: float) -> float | None:
    """The ``q`` quantile (ms) of a cumulative histogram ``[(upper bound s, count)]``: the
    upper bound of the first bucket holding it (None when empty; +Inf gives the last bound)."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] <= 0:
        return None
    total = buckets[-1][1]
    finite = [b for b, _ in buckets if b != float("inf")]
    for bound, count in buckets:
        if count >= q * total:
            return (bound if bound != float("inf") else (finite[-1] if finite else 0.0)) * 1000
    return None


def snapshot(metrics: ServeMetrics, tracker: RateTracker) -> MonitorStats:
    """The numbers of the overview and monitor pages, read from ``metrics`` now."""
    predict = 0
    buckets: list[tuple[float, float]] = []
    verdicts = dict.fromkeys(VERDICTS, 0)
    values: dict[str, float] = {}
    for s in _samples(metrics):
        if s.name == "bastion_requests_total" and s.labels.get("route") == PREDICT_ROUTE:
            predict += int(s.value)
        elif (
            s.name == "bastion_request_latency_seconds_bucket"
            and s.labels.get("route") == PREDICT_ROUTE
        ):
            buckets.append((float(s.labels["le"]), s.value))
        elif s.name == "bastion_verdicts_total":
            verdicts[s.labels["verdict"]] = verdicts.get(s.labels["verdict"], 0) + int(s.value)
        elif s.name in (
            "bastion_samples_total",
            "bastion_holds_total",
            "bastion_holds_pending",
        ):
            values[s.name] = s.value
        elif s.name in ("bastion_auth_failures_total", "bastion_rate_limited_total"):
            values[s.name] = values.get(s.name, 0.0) + s.value
    total_verdicts = sum(verdicts.values())
    now = time.monotonic()
    return MonitorStats(
        predict_requests=predict,
        requests_per_s=tracker.rate(predict, now),
        requests_per_s_since_start=predict / max(now - tracker.started, 1e-9),
        p50_ms=quantile_ms(buckets, 0.5),
        p99_ms=quantile_ms(buckets, 0.99),
        verdicts=[
            VerdictShare(v, n, n / total_verdicts if total_verdicts else 0.0)
            for v, n in verdicts.items()
        ],
        samples=int(values.get("bastion_samples_total", 0)),
        holds=int(values.get("bastion_holds_total", 0)),
        pending_holds=int(values.get("bastion_holds_pending", 0)),
        auth_failures=int(values.get("bastion_auth_failures_total", 0)),
        rate_limited=int(values.get("bastion_rate_limited_total", 0)),
        uptime_s=now - tracker.started,
    )


def tracker_of(state: Any) -> RateTracker:
    """The app's rate tracker (made on first use)."""
    tracker = getattr(state, "dashboard_rates", None)
    if tracker is None:
        tracker = state.dashboard_rates = RateTracker()
    return tracker
