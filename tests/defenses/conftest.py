"""Fixtures for the hardening tests: a small digits subset and a BadNets-poisoned copy."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.poisoning import poison_dataset
from bastion.models.train import train_model
from bastion.models.zoo import build_model, zoo_spec


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """Tiny models train faster on one thread (and waste no CPU spinning on a shared box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small_spec(digits):
    return zoo_spec("cnn", digits.train.shape, digits.train.num_classes, width=16, hidden=64)


@pytest.fixture(scope="session")
def badnets(digits):
    """Digits with 5 % BadNets poisons (target 0, 3×3 patch)."""
    return poison_dataset(
        digits.train, rate=0.05, target=0, patch_size=3, generator=torch.Generator().manual_seed(0)
    )


@pytest.fixture(scope="session")
def backdoored(badnets, small_spec):
    """A small CNN trained on the poisoned digits: it carries the backdoor."""
    torch.manual_seed(0)
    model = build_model(small_spec)
    train_model(model, badnets.dataset, epochs=10, seed=0)
    return model.eval()
