"""What the gateway remembers of its own recent past for the monitor page: each detector's
latest scores (a ring buffer per detector, to draw their distribution against the
threshold) and the drift test's p-value over time (sampled every ``drift_every_s`` by a
background task while requests arrive).

Both live in this process's memory only and are bounded: ``score_capacity`` scores per
detector and ``drift_capacity`` drift samples. Nothing here decides anything: the verdicts
are the guard's; this is what a person looks at to see whether thresholds still fit the
traffic."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import anyio.to_thread

from bastion.guard.verdict import DriftStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreBin:
    lo: float
    hi: float
    count: int
    above: bool  # the bin lies at or above the detector's threshold


@dataclass(frozen=True)
class ScoreDistribution:
    """One detector's recent scores binned, with its threshold (None: not known)."""

    detector: str
    threshold: float | None
    n: int
    above: int  # scores at or above the threshold
    bins: list[ScoreBin]
    lo: float
    hi: float
    beyond: int = 0  # scores past the axis's end (counted in the last bar)

    @property
    def above_share(self) -> float:
        return self.above / self.n if self.n else 0.0

    @property
    def peak(self) -> int:
        return max((b.count for b in self.bins), default=0)


@dataclass(frozen=True)
class DriftPoint:
    ts: float  # unix time
    p_value: float
    alert: bool
    window_size: int

    @property
    def strength(self) -> float:
        """-log10 of the p-value, capped at ``STRENGTH_CAP`` (the drift chart's y)."""
        return neglog10(self.p_value)


STRENGTH_CAP = 10.0


def neglog10(p: float) -> float:
    return min(-math.log10(max(p, 10**-STRENGTH_CAP)), STRENGTH_CAP)


@dataclass
class MonitorHistory:
    score_capacity: int = 2000
    drift_capacity: int = 360
    drift_every_s: float = 10.0
    scores: dict[str, deque[float]] = field(default_factory=dict)
    drift: deque[DriftPoint] = field(init=False)
    decisions: int = 0  # decisions recorded since start
    _sampled_at: int = 0  # ``decisions`` when drift was last sampled

    def __post_init__(self) -> None:
        self.drift = deque(maxlen=self.drift_capacity)

    def record(self, scores: Iterable[dict[str, float]], detectors: Iterable[str]) -> None:
        """Keep the scores of ``detectors`` (the guard's input detectors; the per-client
        ``extraction.*`` entries are not distributions over inputs) of one decision."""
        names = set(detectors)
        self.decisions += 1
        for sample in scores:
            for name, value in sample.items():
                if name in names and math.isfinite(value):
                    ring = self.scores.get(name)
                    if ring is None:
                        ring = self.scores[name] = deque(maxlen=self.score_capacity)
                    ring.append(float(value))

    def distributions(
        self, thresholds: dict[str, float], bins: int = 24
    ) -> list[ScoreDistribution]:
        """Every detector's scores in ``bins`` equal bins spanning the scores and the
        threshold, detectors in name order (those with no score yet left out)."""
        out = []
        for name in sorted(self.scores):
            values = list(self.scores[name])
            if not values:
                continue
            threshold = thresholds.get(name)
            if threshold is not None and not math.isfinite(threshold):
                threshold = None
            ordered = sorted(values)
            lo = ordered[0]
            # the axis ends at the 95th percentile (outliers would squeeze every other
            # score into one bar), past the threshold; what lies beyond goes in the last bar
            hi = ordered[math.ceil(0.95 * len(ordered)) - 1]  # nearest-rank percentile
            if threshold is not None:
                lo = min(lo, threshold)
                hi = max(hi, threshold + 0.25 * (threshold - lo))
            if hi <= lo:
                hi = ordered[-1]
            width = (hi - lo) / bins if hi > lo else 1.0
            counts = [0] * bins
            for v in values:
                counts[max(0, min(int((v - lo) / width), bins - 1))] += 1
            out.append(
                ScoreDistribution(
                    detector=name,
                    threshold=threshold,
                    n=len(values),
                    above=sum(v >= threshold for v in values) if threshold is not None else 0,
                    bins=[
                        ScoreBin(
                            lo=lo + i * width,
                            hi=lo + (i + 1) * width,
                            count=c,
                            above=threshold is not None and lo + i * width >= threshold,
                        )
                        for i, c in enumerate(counts)
                    ],
                    lo=lo,
                    hi=hi,
                    beyond=sum(v > hi for v in values),
                )
            )
        return out

    def add_drift(self, status: DriftStatus, ts: float | None = None) -> None:
        self.drift.append(
            DriftPoint(
                ts=time.time() if ts is None else ts,
                p_value=status.p_value,
                alert=status.alert,
                window_size=status.window_size,
            )
        )
        self._sampled_at = self.decisions

    def due(self) -> bool:
        """A drift sample is worth taking: decisions arrived since the last one."""
        return self.decisions != self._sampled_at

    async def run_drift_sampler(self, status: Callable[[], DriftStatus | None]) -> None:
        """Every ``drift_every_s``, when requests arrived since the last sample, take the
        drift status (off the event loop: the test reads the whole window)."""
        while True:
            await asyncio.sleep(self.drift_every_s)
            if not self.due():
                continue
            try:
                st = await anyio.to_thread.run_sync(status)
            except Exception:  # a sampler never takes the gateway down
                log.exception("drift sample failed")
                continue
            if st is None or st.method == "disabled":
                return
            self.add_drift(st)
