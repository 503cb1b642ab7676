"""Small models for the sweep and Ray tests: a zoo MLP on digits and one on iris (a CSV
written from scikit-learn's bundled set), each trained in a second or two and saved as a
model directory whose provenance names its data and a one-epoch recipe."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_iris

from bastion.assess.schema import Budgets, ThreatModel
from bastion.data import load_dataset
from bastion.models.io import save_model
from bastion.models.train import train_model
from bastion.models.zoo import build_model, zoo_spec
from tests.tabular_models import write_csv

RECIPE = {"epochs": 1, "lr": 1e-2, "batch_size": 64, "seed": 0}

# cheap budgets: every chosen probe runs in well under a second on these models
WHITE_BOX = ThreatModel(
    eps=[0.1],
    attacks=["fgsm", "pgd"],
    curve_attack="pgd",
    curve_eps=[0.05, 0.1],
    probes=["evasion", "blackbox"],
    budgets=Budgets(n_eval=40, pgd_steps=5, queries=30, n_blackbox=8),
)
QUERIES = ThreatModel(
    access="scores",
    probes=["blackbox", "extraction"],
    budgets=Budgets(n_eval=40, queries=30, n_blackbox=8, extraction_queries=[40]),
)


def _model_dir(out: Path, data: str, epochs: int) -> Path:
    bundle = load_dataset(data)
    torch.manual_seed(0)
    spec = zoo_spec("mlp", bundle.train.shape, bundle.train.num_classes, hidden=32)
    module = build_model(spec)
    train_model(module, bundle.train, epochs=epochs, seed=0, lr=1e-2)
    save_model(module, spec, out, provenance={"data": data, "recipe": RECIPE})
    return out


@pytest.fixture(scope="session")
def digits_mlp(tmp_path_factory) -> Path:
    return _model_dir(tmp_path_factory.mktemp("digits-mlp"), "digits", epochs=3)


@pytest.fixture(scope="session")
def iris_mlp(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("iris-mlp")
    raw = load_iris()
    csv = write_csv(root / "iris.csv", raw.data.astype(np.float32), raw.target)
    return _model_dir(root / "model", str(csv), epochs=30)
