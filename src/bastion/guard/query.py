"""The query-sequence detectors beside PRADA, composed for the guard's request path.

:class:`QueryMonitors` holds the similarity detector (:mod:`bastion.guard.similarity`,
near-duplicate queries of Square / HopSkipJump-style attacks, per client and across
clients) and the coverage detector (:mod:`bastion.guard.coverage`, feature-space coverage
against benign clients). Both are fitted on held-out benign data by
:func:`fit_query_monitors`; at run time one call per batch returns one
:class:`~bastion.guard.policy.ClientSignal` per sample, which the guard merges with the
extraction monitor's (an alert of any of them is an extraction alert for the policy; the
reasons and the ``similarity.*`` / ``coverage.*`` scores name the detector).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from bastion.guard.config import QueryConfig
from bastion.guard.coverage import CoverageMonitor, CoverageStatus
from bastion.guard.policy import ClientSignal
from bastion.guard.similarity import SimilarityMonitor, SimilarityStatus
from bastion.guard.tap import TapOutputs


@dataclass(frozen=True)
class QueryBatch:
    """:meth:`QueryMonitors.prepare` of a micro-batch: each row's similarity fingerprint and
    digest, and its coverage cell and projection (None: that detector is off)."""

    similarity: tuple[list[np.ndarray], list[int]] | None
    coverage: tuple[np.ndarray, np.ndarray] | None

    def part(self, rows: slice) -> QueryBatch:
        sim = (
            None
            if self.similarity is None
            else (self.similarity[0][rows], self.similarity[1][rows])
        )
        cov = None if self.coverage is None else (self.coverage[0][rows], self.coverage[1][rows])
        return QueryBatch(sim, cov)


class QueryStatus(BaseModel):
    """What the query detectors say about one client (None: that detector is off)."""

    client_id: str
    similarity: SimilarityStatus | None = None
    coverage: CoverageStatus | None = None

    @property
    def alerts(self) -> dict[str, int]:
        """Detector name → the client's query count when it alerted."""
        out = {}
        for name, st in (("similarity", self.similarity), ("coverage", self.coverage)):
            if st is not None and st.alert and st.alert_at_query is not None:
                out[name] = st.alert_at_query
        return out


def merge_signals(*signals: ClientSignal | None) -> ClientSignal | None:
    """One signal from several: alerts OR-ed, scores and reasons concatenated."""
    present = [s for s in signals if s is not None]
    if not present:
        return None
    return ClientSignal(
        any(s.extraction_alert for s in present),
        any(s.volume_alert for s in present),
        tuple(kv for s in present for kv in s.scores),
        tuple(r for s in present for r in s.reasons),
    )


class QueryMonitors:
    """The similarity and coverage detectors (either may be None)."""

    def __init__(
        self,
        similarity: SimilarityMonitor | None = None,
        coverage: CoverageMonitor | None = None,
    ) -> None:
        self.similarity = similarity
        self.coverage = coverage

    def prepare(self, x_scaled: torch.Tensor, outputs: TapOutputs) -> QueryBatch:
        """The stateless part of :meth:`observe` for a whole micro-batch (fingerprints,
        projections), computed once however many clients share it."""
        return QueryBatch(
            None if self.similarity is None else self.similarity.prepare(x_scaled),
            None if self.coverage is None else self.coverage.project(outputs.features),
        )

    def observe(
        self,
        client_id: str,
        x_scaled: torch.Tensor,
        outputs: TapOutputs,
        prepared: QueryBatch | None = None,
    ) -> list[ClientSignal]:
        """Record a batch from ``client_id`` (``x_scaled``: range-scaled inputs; ``outputs``:
        the model's view of them); one merged signal per sample. ``prepared``: these rows'
        part of :meth:`prepare`, when computed for a larger batch."""
        n = x_scaled.shape[0]
        parts: list[list[ClientSignal]] = []
        if self.similarity is not None:
            sim = prepared.similarity if prepared is not None else None
            statuses_s = self.similarity.observe(client_id, x_scaled, sim)
            parts.append([s.signal() for s in statuses_s])
        if self.coverage is not None:
            cov = prepared.coverage if prepared is not None else None
            statuses = self.coverage.observe(client_id, outputs.features, outputs.predictions, cov)
            parts.append([s.signal() for s in statuses])
        if not parts:
            return [ClientSignal() for _ in range(n)]
        return [merge_signals(*(p[i] for p in parts)) or ClientSignal() for i in range(n)]

    def status(self, client_id: str) -> QueryStatus:
        return QueryStatus(
            client_id=client_id,
            similarity=None if self.similarity is None else self.similarity.status(client_id),
            coverage=None if self.coverage is None else self.coverage.status(client_id),
        )

    def reset(self, client_id: str) -> None:
        for monitor in (self.similarity, self.coverage):
            if monitor is not None:
                monitor.reset(client_id)

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-ready scalars, tensors) of both detectors."""
        doc: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        if self.similarity is not None:
            doc["similarity"] = self.similarity.state()
        if self.coverage is not None:
            doc["coverage"], ts = self.coverage.state()
            tensors.update({f"coverage.{k}": v for k, v in ts.items()})
        return doc, tensors

    @classmethod
    def from_state(cls, doc: dict[str, Any], tensors: dict[str, torch.Tensor]) -> QueryMonitors:
        sim = SimilarityMonitor.from_state(doc["similarity"]) if "similarity" in doc else None
        cov = None
        if "coverage" in doc:
            ts = {k[9:]: v for k, v in tensors.items() if k.startswith("coverage.")}
            cov = CoverageMonitor.from_state(doc["coverage"], ts)
        return cls(sim, cov)


def fit_query_monitors(
    config: QueryConfig,
    x_scaled: torch.Tensor,
    outputs: TapOutputs,
    *,
    num_classes: int,
    seed: int = 0,
) -> QueryMonitors | None:
    """Fit the enabled query detectors on held-out benign data: ``x_scaled`` the range-scaled
    inputs, ``outputs`` the model's view of them. None when both are disabled."""
    sim = cov = None
    if config.similarity.enabled:
        sim = SimilarityMonitor(config.similarity).fit(x_scaled, seed=seed)
    if config.coverage.enabled:
        cov = CoverageMonitor(config.coverage).fit(
            outputs.features, outputs.predictions, num_classes=num_classes, seed=seed
        )
    return None if sim is None and cov is None else QueryMonitors(sim, cov)
