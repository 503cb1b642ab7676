"""Simulated clients for evaluating the guard's stateful detectors: benign clients who send
natural inputs, extraction attackers (Jacobian-based augmentation, Knockoff, random noise)
run through :class:`bastion.attacks.extraction.ModelExtraction`, and the pieces the
gateway benchmark uses for the same clients over HTTP: :class:`SplitTarget` (one attacker
behind several API keys), :func:`kcenter_order` (a diversity-seeking Knockoff) and
:func:`client_alerts` (when each detector alerted on a client)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from bastion.attacks.extraction import ModelExtraction
from bastion.attacks.targets import BaseTarget, CallableTarget, QueryTarget
from bastion.data.box import Box
from bastion.errors import AttackError
from bastion.guard.guard import Guard
from bastion.models.zoo import mlp

DETECTOR_NAMES = ("prada", "anomaly_rate", "similarity", "coverage")


@dataclass(frozen=True)
class DetectorAlerts:
    """The client's query count when each stateful detector first alerted (None: never).
    ``prada`` and ``anomaly_rate`` are the extraction monitor's two signals."""

    prada: int | None = None
    anomaly_rate: int | None = None
    similarity: int | None = None
    coverage: int | None = None

    @property
    def first(self) -> int | None:
        """The guard's alert: the earliest of them."""
        hits = [v for v in (self.prada, self.anomaly_rate, self.similarity, self.coverage) if v]
        return min(hits) if hits else None

    def get(self, name: str) -> int | None:
        return getattr(self, name)


def client_alerts(guard: Guard, client_id: str) -> DetectorAlerts:
    """When each of the guard's stateful detectors alerted on ``client_id``."""
    ext = guard.client_status(client_id)
    query = guard.query_status(client_id)
    sim = query.similarity if query is not None else None
    cov = query.coverage if query is not None else None
    return DetectorAlerts(
        prada=ext.prada_alert_at if ext is not None else None,
        anomaly_rate=ext.anomaly_alert_at if ext is not None else None,
        similarity=sim.alert_at_query if sim is not None and sim.alert else None,
        coverage=cov.alert_at_query if cov is not None and cov.alert else None,
    )


@dataclass(frozen=True)
class ClientRun:
    """What the guard concluded about one simulated client."""

    client_id: str
    queries: int
    alert_at: int | None
    reason: str | None
    last_w: float | None
    alerts: DetectorAlerts = field(default_factory=DetectorAlerts)

    @property
    def alerted(self) -> bool:
        return self.alert_at is not None


class _Recorder:
    """Sends every query batch through the guard as one client and notes the first alert."""

    def __init__(self, guard: Guard, client_id: str, now: float) -> None:
        self.guard, self.client_id, self.now = guard, client_id, now
        self.queries = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        logits, _ = self.guard.predict_and_inspect(x, self.client_id, now=self.now)
        self.queries += x.shape[0]
        return logits.softmax(1)

    def result(self) -> ClientRun:
        alerts = client_alerts(self.guard, self.client_id)
        status = self.guard.client_status(self.client_id)
        query = self.guard.query_status(self.client_id)
        reason = status.alert_reason if status is not None else None
        if reason is None and query is not None:
            for st in (query.similarity, query.coverage):
                if st is not None and st.alert:
                    reason = st.reason
                    break
        last_w = status.prada_w if status is not None else None
        return ClientRun(self.client_id, self.queries, alerts.first, reason, last_w, alerts)


def run_client(
    guard: Guard, queries: torch.Tensor, client_id: str, *, batch_size: int = 1, now: float = 0.0
) -> ClientRun:
    """Stream ``queries`` through the guard as ``client_id`` (batches of ``batch_size``)."""
    rec = _Recorder(guard, client_id, now)
    for i in range(0, len(queries), batch_size):
        rec(queries[i : i + batch_size])
    return rec.result()


def benign_order(n_pool: int, queries: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of a benign replay: a random order of the pool (without replacement while it
    lasts, then with replacement)."""
    order = torch.randperm(n_pool, generator=generator)
    if queries > n_pool:
        extra = torch.randint(n_pool, (queries - n_pool,), generator=generator)
        order = torch.cat([order, extra])
    return order[:queries]


def benign_clients(
    guard: Guard,
    pool: torch.Tensor,
    *,
    n_clients: int = 20,
    queries: int = 1000,
    seed: int = 0,
    prefix: str = "benign",
) -> list[ClientRun]:
    """``n_clients`` clients who each send ``queries`` natural inputs drawn from ``pool``
    (without replacement while the pool lasts, then with replacement)."""
    gen = torch.Generator().manual_seed(seed)
    runs = []
    for k in range(n_clients):
        order = benign_order(len(pool), queries, gen)
        runs.append(run_client(guard, pool[order], f"{prefix}-{seed}-{k}", batch_size=8))
    return runs


def extraction_attack(
    guard: Guard,
    pool: torch.Tensor,
    *,
    source: str = "jacobian",
    budget: int = 300,
    seed_size: int = 50,
    seed: int = 0,
    bounds: tuple[float, float] | Box = (0.0, 1.0),
    num_classes: int = 10,
    client_id: str | None = None,
) -> ClientRun:
    """Run a model-extraction attacker (``source`` ``jacobian``, ``pool`` (Knockoff),
    ``transformed`` or ``noise``, see :mod:`bastion.attacks.extraction`) through the guard
    as one client with ``budget`` queries; the attacker starts from ``seed_size`` natural
    images of ``pool`` (Jacobian) or draws from ``pool`` (Knockoff)."""
    client_id = client_id or f"attacker-{source}-{seed}"
    rec = _Recorder(guard, client_id, 0.0)
    target = CallableTarget(rec, kind="scores", num_classes=num_classes)
    shape = tuple(pool.shape[1:])

    def build() -> nn.Module:
        return mlp(input_shape=shape, num_classes=num_classes, hidden=64, depth=1)

    ModelExtraction(
        build,
        source=source,
        budget=budget,
        seed_size=seed_size,
        bounds=bounds,
        seed=seed,
        min_steps=50,
        max_steps=200,
    ).fit(target, pool)
    return rec.result()


class SplitTarget(BaseTarget):
    """One attacker behind several keys: each batch (of at most ``batch_size``) goes to the
    next of ``targets`` in turn. ``log`` records, after each batch, (total queries so far,
    index of the target that answered it)."""

    def __init__(self, targets: Sequence[QueryTarget], *, batch_size: int = 16) -> None:
        if not targets:
            raise AttackError("a SplitTarget needs at least one target")
        kinds = {t.kind for t in targets}
        if len(kinds) != 1:
            raise AttackError(f"the targets of a SplitTarget must share one kind, got {kinds}")
        super().__init__(
            kind=kinds.pop(), num_classes=targets[0].num_classes, batch_size=batch_size
        )
        self.targets = list(targets)
        self.turn = 0
        self.log: list[tuple[int, int]] = []

    def _answer(self, x: torch.Tensor) -> torch.Tensor:
        i = self.turn % len(self.targets)
        self.turn += 1
        out = self.targets[i](x)
        self.log.append((self.queries, i))
        return out


def kcenter_order(pool: torch.Tensor, n: int, *, start: int = 0) -> torch.Tensor:
    """``n`` pool indices in greedy farthest-point (k-center) order in input space: each
    next sample is the one farthest from all chosen so far, the diversity selection of
    ActiveThief (Pal et al., AAAI 2020) and core-set active learning."""
    flat = pool.flatten(1).float()
    n = min(n, flat.shape[0])
    chosen = [start]
    dmin = (flat - flat[start]).norm(dim=1)
    for _ in range(n - 1):
        j = int(dmin.argmax())
        chosen.append(j)
        dmin = torch.minimum(dmin, (flat - flat[j]).norm(dim=1))
    return torch.tensor(chosen, dtype=torch.long)
