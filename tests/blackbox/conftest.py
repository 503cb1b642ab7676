"""Fixtures for the black-box and extraction tests: recording targets, a model whose
gradients must never be used, and a small digits evaluation batch."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.attacks.targets import ModuleTarget


class _NoGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):  # type: ignore[override]
        return x.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        raise RuntimeError("a black-box attack used the model's gradients")


class GradientTrap(nn.Module):
    """Wraps a model: forward works, any backward pass through it raises; counts forwards."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forwards += 1
        return self.inner(_NoGrad.apply(x))


class RecordingTarget:
    """A query target that records every call (batch sizes) before delegating."""

    def __init__(self, target) -> None:
        self.target = target
        self.calls: list[int] = []

    @property
    def kind(self):
        return self.target.kind

    @property
    def num_classes(self) -> int:
        return self.target.num_classes

    @property
    def queries(self) -> int:
        return self.target.queries

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        assert not x.requires_grad, "queries must not carry gradients"
        self.calls.append(int(x.shape[0]))
        return self.target(x)


@pytest.fixture()
def trap(digits_module) -> GradientTrap:
    return GradientTrap(digits_module)


@pytest.fixture()
def recording(trap):
    def make(kind: str = "scores") -> RecordingTarget:
        return RecordingTarget(ModuleTarget(trap, kind=kind, batch_size=1_000_000))

    return make


@pytest.fixture()
def correct_batch(digits, digits_module):
    """40 test digits the model classifies correctly."""
    x, y = digits.test.x[:120], digits.test.y[:120]
    with torch.no_grad():
        ok = digits_module(x).argmax(1) == y
    return x[ok][:40], y[ok][:40]


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread: on a shared, busy CPU, torch's thread pool spins and slows tiny
    models down by an order of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
