"""Shared fixtures: a seeded tiny digits model trained once per session, an isolated store."""

from __future__ import annotations

import pytest
import torch

from bastion.data import DataBundle, load_dataset
from bastion.models.io import LoadedModel, save_model, state_sha256
from bastion.models.train import train_model
from bastion.models.zoo import build_model, zoo_spec


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path, monkeypatch):
    monkeypatch.setenv("BASTION_DB", f"sqlite:///{tmp_path / 'bastion.db'}")
    monkeypatch.setenv("BASTION_PROGRESS", "0")
    from bastion.progress import set_progress

    set_progress(False)


@pytest.fixture(scope="session")
def digits() -> DataBundle:
    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_model_dir(digits, tmp_path_factory):
    """A small CNN trained on digits (about 2 s), saved as a model directory."""
    torch.manual_seed(0)
    spec = zoo_spec("cnn", digits.train.shape, digits.train.num_classes, width=16, hidden=64)
    module = build_model(spec)
    train_model(module, digits.train, epochs=8, seed=0)
    out = tmp_path_factory.mktemp("model")
    save_model(
        module,
        spec,
        out,
        provenance={
            "data": "digits",
            "recipe": {"epochs": 8, "lr": 1e-3, "batch_size": 64, "seed": 0},
        },
    )
    return out


@pytest.fixture()
def digits_model(digits_model_dir) -> LoadedModel:
    from bastion.models.io import load_model

    return load_model(digits_model_dir)


@pytest.fixture()
def digits_module(digits_model_dir):
    """A fresh copy per test (loading is cheap), so no test sees another's mode or weights."""
    from bastion.models.io import load_model

    return load_model(digits_model_dir).module


__all__ = ["state_sha256"]
