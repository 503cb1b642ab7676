"""Fixtures for the poisoning and membership-inference tests: tiny seeded models on digits."""

from __future__ import annotations

import pytest
import torch

from bastion.assess.probe import TrainingRecipe
from bastion.models.zoo import zoo_spec

FAST_RECIPE = TrainingRecipe(epochs=4, batch_size=64, lr=2e-3, seed=0)


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def small_cnn_spec(digits):
    return zoo_spec("cnn", digits.train.shape, digits.train.num_classes, width=8, hidden=32)


@pytest.fixture()
def fast_recipe() -> TrainingRecipe:
    return TrainingRecipe(**vars(FAST_RECIPE))
