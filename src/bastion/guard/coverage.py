"""Per-client coverage of the model's feature space, against what benign clients cover.

A model-extraction attacker wants answers over the whole input space; a Knockoff attacker
with natural in-distribution samples (Orekondy et al., CVPR 2019) sends no near-duplicates
and no synthetic inputs, so this detector looks at *how much* of the space a client's
queries reach. The model's penultimate features (the scaled input for a model read through
its scores) are projected on their top principal components, learned on held-out benign
data, and three statistics are kept per client:

* **cells**: distinct k-means cells (``cells`` of them, fitted on the held-out data) reached;
* **spread**: the mean distance from each query to the nearest of the client's previous
  ``history`` queries, in units of the held-out data's RMS radius: a diversity-seeking
  selection (k-center / core-set order, as ActiveThief, Pal et al. AAAI 2020) keeps it
  high;
* **entropy**: of the predicted classes, in bits.

After n queries (``min_queries`` ≤ n ≤ ``horizon_``) the client is alerted when one of
them exceeds the *benign envelope* at n: the largest value any of ``calibration_clients``
simulated benign clients reached at n, each replaying a random order of the held-out
benign rows (so ``horizon_`` is at most their number), plus ``margin_cells`` cells,
``margin_spread`` × the spread, ``margin_bits`` bits. One-sided by design: a benign client
whose traffic is narrower than the data (most real users) is never alerted for it, nor is
a query-based attacker (its near-duplicates lower the spread).

Limit, stated plainly: an attacker whose queries are drawn like the benign held-out data,
at a benign client's volume, covers exactly what a benign client covers; nothing in the
queries alone tells them apart. The detector catches attackers that cover the space faster
than benign traffic (diversity-seeking selection, a broad transfer set) and, calibrated on
real per-client traffic, attackers broader than real users.

State is bounded (at most ``max_clients`` clients, LRU; a bit set, K counts and
``history`` projected points each); work per query is one projection, one nearest-centroid
and one nearest-neighbour search over ``history`` points.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from pydantic import BaseModel

from bastion.errors import ConfigError, NotFittedError
from bastion.guard.clients import ClientTable
from bastion.guard.config import CoverageConfig
from bastion.guard.policy import ClientSignal


class CoverageStatus(BaseModel):
    """The coverage detector's view of one client after its latest query."""

    client_id: str
    queries: int = 0
    cells: int = 0
    cells_limit: float | None = None
    spread: float = 0.0
    spread_limit: float | None = None
    entropy_bits: float = 0.0
    entropy_limit: float | None = None
    alert: bool = False
    reason: str | None = None
    alert_at_query: int | None = None

    def signal(self) -> ClientSignal:
        scores = (
            ("coverage.cells", float(self.cells)),
            ("coverage.spread", self.spread),
            ("coverage.entropy_bits", self.entropy_bits),
        )
        reasons = (f"client {self.client_id}: {self.reason}",) if self.alert else ()
        return ClientSignal(self.alert, False, scores, reasons)


def _xlogx(c: int) -> float:
    return c * math.log2(c) if c > 0 else 0.0


@dataclass
class _Client:
    num_classes: int
    history: int
    dim: int
    seen: int = 0  # bit set of cells
    points: np.ndarray = field(init=False)
    stored: int = 0
    nn_sum: float = 0.0
    counts: list[int] = field(init=False)
    counted: int = 0
    sum_xlogx: float = 0.0  # Σ_k c_k log2 c_k, so that H = log2 n − Σ / n in O(1)
    queries: int = 0
    cells: int = 0
    alert: bool = False
    reason: str | None = None
    alert_at: int | None = None

    def __post_init__(self) -> None:
        self.counts = [0] * self.num_classes
        self.points = np.zeros((self.history, self.dim), dtype=np.float32)

    def place(self, z: np.ndarray) -> None:
        """Add the distance from ``z`` to its nearest stored point, then store ``z``."""
        n = min(self.stored, self.history)
        if n:
            self.nn_sum += float(np.sqrt(((self.points[:n] - z) ** 2).sum(1).min()))
        self.points[self.stored % self.history] = z
        self.stored += 1

    @property
    def spread(self) -> float:
        return self.nn_sum / (self.stored - 1) if self.stored > 1 else 0.0

    def count(self, pred: int) -> None:
        c = self.counts[pred]
        self.sum_xlogx += _xlogx(c + 1) - _xlogx(c)
        self.counts[pred] = c + 1
        self.counted += 1

    @property
    def entropy(self) -> float:
        n = self.counted
        return max(0.0, math.log2(n) - self.sum_xlogx / n) if n else 0.0


def _kmeans(z: torch.Tensor, k: int, gen: torch.Generator, iters: int = 25) -> torch.Tensor:
    """Lloyd's algorithm with k-means++ seeding; returns the (k, m) centroids."""
    n = z.shape[0]
    centres = [z[int(torch.randint(n, (1,), generator=gen))]]
    d2 = (z - centres[0]).pow(2).sum(1)
    for _ in range(1, k):
        probs = d2 / d2.sum() if d2.sum() > 0 else torch.full_like(d2, 1.0 / n)
        centres.append(z[int(torch.multinomial(probs, 1, generator=gen))])
        d2 = torch.minimum(d2, (z - centres[-1]).pow(2).sum(1))
    c = torch.stack(centres)
    for _ in range(iters):
        assign = torch.cdist(z, c).argmin(1)
        for j in range(k):
            members = z[assign == j]
            if len(members):
                c[j] = members.mean(0)
    return c


class CoverageMonitor:
    """Distinct feature cells and prediction entropy per client against a benign envelope
    (module docstring). ``fit(features, predictions)`` on held-out benign data;
    ``observe(client, features, predictions)`` returns one :class:`CoverageStatus` per
    query. Thread-safe."""

    def __init__(self, config: CoverageConfig | None = None) -> None:
        self.config = config or CoverageConfig()
        self._clients: ClientTable[_Client] = ClientTable()
        self._lock = self._clients.lock

    def fit(
        self,
        features: torch.Tensor,
        predictions: torch.Tensor,
        *,
        num_classes: int,
        seed: int = 0,
    ) -> CoverageMonitor:
        """Learn the projection and the cells on held-out benign ``features`` (N, D) and
        simulate benign clients from them for the envelope (never the training rows)."""
        cfg = self.config
        f = features.detach().flatten(1).float().cpu()
        n = f.shape[0]
        if n < 20:
            raise ConfigError("calibrating the coverage detector needs >= 20 held-out inputs")
        gen = torch.Generator().manual_seed(seed)
        self.num_classes_ = int(num_classes)
        self.mean_ = f.mean(0)
        m = min(cfg.components, f.shape[1], n - 1)
        _, _, v = torch.linalg.svd(f - self.mean_, full_matrices=False)
        self.components_ = v[:m].T.contiguous()
        z = (f - self.mean_) @ self.components_
        k = int(min(cfg.cells, max(2, n // 5)))
        self.centroids_ = _kmeans(z, k, gen)
        cells = torch.cdist(z, self.centroids_).argmin(1).numpy()
        preds = predictions.detach().cpu().long().numpy()
        self.radius_ = float(z.pow(2).sum(1).mean().sqrt().clamp_min(1e-12))
        zn = (z / self.radius_).numpy()
        horizon = int(min(cfg.horizon, n))
        rng = np.random.default_rng(seed)
        env_cells = np.zeros(horizon, dtype=np.int64)
        env_bits = np.zeros(horizon)
        env_spread = np.zeros(horizon)
        for _ in range(cfg.calibration_clients):
            pick = rng.permutation(n)[:horizon]
            d, h = _trajectory(cells[pick], preds[pick], self.num_classes_)
            np.maximum(env_cells, d, out=env_cells)
            np.maximum(env_bits, h, out=env_bits)
            np.maximum(env_spread, _spread(zn[pick], cfg.history), out=env_spread)
        self.horizon_ = horizon
        self.envelope_cells_ = env_cells
        self.envelope_bits_ = env_bits
        self.envelope_spread_ = env_spread
        self.n_calibration_ = int(n)
        self._prepare()
        return self

    def _check(self) -> None:
        if not hasattr(self, "centroids_"):
            raise NotFittedError(self, "fit")

    def project(self, features: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """The cell of every row of ``features`` and its projection in radius units."""
        self._check()
        f = features.detach().flatten(1).float().cpu().numpy()
        z = (f - self._mean) @ self._components
        cells = (self._c2 - 2.0 * z @ self._centroids_t).argmin(1)
        return cells, (z / self.radius_).astype(np.float32)

    def _prepare(self) -> None:
        self._mean = self.mean_.numpy()
        self._components = self.components_.numpy()
        self._centroids_t = self.centroids_.numpy().T.copy()
        self._c2 = (self.centroids_.numpy() ** 2).sum(1)

    def limits(self, n: int) -> tuple[float, float, float] | None:
        """(cells, spread, bits) a client must exceed after n queries; None outside the
        tested range."""
        self._check()
        cfg = self.config
        if n < cfg.min_queries or n > self.horizon_:
            return None
        return (
            float(self.envelope_cells_[n - 1]) + cfg.margin_cells,
            float(self.envelope_spread_[n - 1]) * (1.0 + cfg.margin_spread),
            float(self.envelope_bits_[n - 1]) + cfg.margin_bits,
        )

    def observe(
        self,
        client_id: str,
        features: torch.Tensor,
        predictions: torch.Tensor,
        prepared: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> list[CoverageStatus]:
        """Record a batch of queries from ``client_id`` (the model's features and
        predicted classes for them); one status per query. ``prepared``: :meth:`project`
        of these features, when already computed."""
        cells, points = prepared if prepared is not None else self.project(features)
        preds = predictions.detach().cpu().long().tolist()
        out = []
        with self._lock:
            client = self._clients.touch(
                client_id,
                lambda: _Client(self.num_classes_, self.config.history, self.components_.shape[1]),
                self.config.max_clients,
            )
            for cell, point, pred in zip(cells.tolist(), points, preds, strict=True):
                self._step(client, int(cell), point, int(pred))
                out.append(self._status(client_id, client))
        return out

    def _step(self, client: _Client, cell: int, point: np.ndarray, pred: int) -> None:
        client.queries += 1
        client.place(point)
        bit = 1 << cell
        if not client.seen & bit:
            client.seen |= bit
            client.cells += 1
        if 0 <= pred < self.num_classes_:
            client.count(pred)
        lim = self.limits(client.queries)
        if client.alert or lim is None:
            return
        if client.cells > lim[0]:
            why = f"{client.cells} feature cells reached, benign clients at most {lim[0]:g}"
        elif (spread := client.spread) > lim[1]:
            why = f"feature-space spread {spread:.3f}, benign clients at most {lim[1]:.3f}"
        elif (bits := client.entropy) > lim[2] + 1e-9:
            why = f"prediction entropy {bits:.3f} bits, benign at most {lim[2]:.3f}"
        else:
            return
        client.alert, client.alert_at = True, client.queries
        client.reason = f"coverage: after {client.queries} queries {why}"

    def _status(self, client_id: str, client: _Client) -> CoverageStatus:
        lim = self.limits(client.queries)
        return CoverageStatus.model_construct(
            client_id=client_id,
            queries=client.queries,
            cells=client.cells,
            cells_limit=None if lim is None else lim[0],
            spread=client.spread,
            spread_limit=None if lim is None else lim[1],
            entropy_bits=client.entropy,
            entropy_limit=None if lim is None else lim[2],
            alert=client.alert,
            reason=client.reason,
            alert_at_query=client.alert_at,
        )

    def status(self, client_id: str) -> CoverageStatus:
        self._check()
        with self._lock:
            client = self._clients.get(client_id)
            if client is None:
                return CoverageStatus(client_id=client_id)
            return self._status(client_id, client)

    def reset(self, client_id: str) -> None:
        self._clients.discard(client_id)

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-ready scalars, tensors) of what ``fit`` learned."""
        self._check()
        scalars = {
            "config": self.config.model_dump(mode="json"),
            "num_classes_": self.num_classes_,
            "n_calibration_": self.n_calibration_,
            "horizon_": self.horizon_,
            "radius_": self.radius_,
        }
        tensors = {
            "mean": self.mean_,
            "components": self.components_,
            "centroids": self.centroids_,
            "envelope_cells": torch.from_numpy(self.envelope_cells_),
            "envelope_bits": torch.from_numpy(self.envelope_bits_),
            "envelope_spread": torch.from_numpy(self.envelope_spread_),
        }
        return scalars, tensors

    @classmethod
    def from_state(
        cls, scalars: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> CoverageMonitor:
        monitor = cls(CoverageConfig.model_validate(scalars["config"]))
        monitor.num_classes_ = int(scalars["num_classes_"])
        monitor.n_calibration_ = int(scalars["n_calibration_"])
        monitor.horizon_ = int(scalars["horizon_"])
        monitor.radius_ = float(scalars["radius_"])
        monitor.mean_ = tensors["mean"].float()
        monitor.components_ = tensors["components"].float()
        monitor.centroids_ = tensors["centroids"].float()
        monitor.envelope_cells_ = tensors["envelope_cells"].numpy().astype(np.int64)
        monitor.envelope_bits_ = tensors["envelope_bits"].numpy().astype(np.float64)
        monitor.envelope_spread_ = tensors["envelope_spread"].numpy().astype(np.float64)
        monitor._prepare()
        return monitor


def _trajectory(cells: np.ndarray, preds: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct cells and class entropy (bits) after each of the queries of one client."""
    first = np.zeros(len(cells), dtype=bool)
    _, idx = np.unique(cells, return_index=True)
    first[idx] = True
    distinct = np.cumsum(first)
    onehot = np.zeros((len(preds), k))
    onehot[np.arange(len(preds)), np.clip(preds, 0, k - 1)] = 1
    counts = np.cumsum(onehot, 0)
    n = counts.sum(1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        p = counts / n
        bits = -np.where(p > 0, p * np.log2(np.where(p > 0, p, 1)), 0).sum(1)
    return distinct, bits


def _spread(z: np.ndarray, history: int) -> np.ndarray:
    """The spread after each query of one client: mean distance of queries 2..n to the
    nearest of the previous ``history`` ones (0 after one query)."""
    t = torch.from_numpy(np.ascontiguousarray(z, dtype=np.float32))
    d = torch.cdist(t, t)
    i = torch.arange(len(t))
    lag = i[:, None] - i[None, :]
    d = d.masked_fill((lag <= 0) | (lag > history), float("inf"))
    nn = d.min(1).values[1:].double().numpy()
    out = np.zeros(len(t))
    out[1:] = np.cumsum(nn) / np.arange(1, len(t))
    return out
