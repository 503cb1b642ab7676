"""A user's own tabular classifier, as `--entry-point tabular_net:build` finds it.

Standardisation lives inside the model (its buffers are saved with the weights), so the
model takes raw, unscaled features, the way the data file holds them."""

import torch
from torch import nn

N_FEATURES, N_CLASSES = 30, 2


class Standardize(nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("std", torch.ones(n))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def build() -> nn.Module:
    """The architecture; `bastion` loads the trained weights into it."""
    return nn.Sequential(
        Standardize(N_FEATURES),
        nn.Linear(N_FEATURES, 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, N_CLASSES),
    )
