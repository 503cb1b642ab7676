"""Tiny seeded MLPs on sklearn's 8×8 digits as vectors in [0, 1], shared by the FAB-T and
AutoAttack tests: a 10-class one and a 2-class one (3 vs 8)."""

from __future__ import annotations

import torch
from sklearn import datasets as sklearn_datasets
from torch import nn
from torch.nn import functional as F


def digits_vectors(classes: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    features, labels = sklearn_datasets.load_digits(return_X_y=True)
    x = torch.tensor(features, dtype=torch.float32) / 16.0
    y = torch.tensor(labels, dtype=torch.int64)
    if classes is not None:
        keep = torch.isin(y, torch.tensor(classes))
        x, y = x[keep], y[keep]
        y = torch.searchsorted(torch.tensor(sorted(classes)), y)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    return x[perm], y[perm]


def trained_mlp(x: torch.Tensor, y: torch.Tensor, hidden: int = 32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, int(y.max()) + 1)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def size(adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (adv - x).flatten(1)
    return d.abs().amax(1) if norm == "inf" else d.norm(dim=1)
