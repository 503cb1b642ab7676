"""Simulated clients for evaluating the extraction monitor: benign clients who send natural
inputs, and extraction attackers (Jacobian-based augmentation, random noise) run through
:class:`bastion.attacks.extraction.ModelExtraction` against the guarded model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bastion.attacks.extraction import ModelExtraction
from bastion.attacks.targets import CallableTarget
from bastion.data.box import Box
from bastion.guard.guard import Guard
from bastion.models.zoo import mlp


@dataclass(frozen=True)
class ClientRun:
    """What the guard concluded about one simulated client."""

    client_id: str
    queries: int
    alert_at: int | None
    reason: str | None
    last_w: float | None

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
        status = self.guard.client_status(self.client_id)
        if status is None:
            return ClientRun(self.client_id, self.queries, None, None, None)
        return ClientRun(
            self.client_id, self.queries, status.alert_at_query, status.alert_reason, status.prada_w
        )


def run_client(
    guard: Guard, queries: torch.Tensor, client_id: str, *, batch_size: int = 1, now: float = 0.0
) -> ClientRun:
    """Stream ``queries`` through the guard as ``client_id`` (batches of ``batch_size``)."""
    rec = _Recorder(guard, client_id, now)
    for i in range(0, len(queries), batch_size):
        rec(queries[i : i + batch_size])
    return rec.result()


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
        order = torch.randperm(len(pool), generator=gen)
        if queries > len(pool):
            extra = torch.randint(len(pool), (queries - len(pool),), generator=gen)
            order = torch.cat([order, extra])
        runs.append(run_client(guard, pool[order[:queries]], f"{prefix}-{seed}-{k}", batch_size=8))
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
    """Run a model-extraction attacker (``source`` ``jacobian`` or ``noise``, see
    :mod:`bastion.attacks.extraction`) through the guard as one client with ``budget``
    queries; the attacker starts from ``seed_size`` natural images of ``pool``."""
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
