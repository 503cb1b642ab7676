"""A user's tabular model, made the way the user-model tests need it: the breast-cancer
rows as a CSV (label first), a torch MLP defined in a module of its own (loaded with
``--entry-point NAME:build``, standardisation inside the model so it takes raw features),
trained on the 80 % split ``load_dataset`` makes of that CSV, and its ONNX export."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

MODULE = """
import torch
from torch import nn


class Standardize(nn.Module):
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean))
        self.register_buffer("std", torch.tensor(std))

    def forward(self, x):
        return (x - self.mean) / self.std


def build():
    return nn.Sequential(
        Standardize({mean}, {std}), nn.Linear({d}, 32), nn.ReLU(), nn.Linear(32, {k})
    )
"""


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """``label,f0,…`` then one row per sample, label first."""
    header = "label," + ",".join(f"f{i}" for i in range(x.shape[1]))
    rows = [",".join([str(int(t)), *(f"{v:.6g}" for v in r)]) for r, t in zip(x, y, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def split_like_bastion(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The 80/20 seeded split load_dataset makes of a single CSV: (train, test) rows."""
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    cut = int(0.8 * n)
    return perm[:cut], perm[cut:]


def entry_point_mlp(root: Path, module_name: str, x_train: np.ndarray, k: int = 2) -> nn.Module:
    """Write ``root/<module_name>.py`` (standardising with ``x_train``'s statistics) and
    return a fresh model built by its ``build()``."""
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    (root / f"{module_name}.py").write_text(
        MODULE.format(mean=mean.tolist(), std=std.tolist(), d=x_train.shape[1], k=k)
    )
    sys.path.insert(0, str(root))
    try:
        return __import__(module_name).build()
    finally:
        sys.path.remove(str(root))
        sys.modules.pop(module_name, None)


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, *, steps: int = 150) -> nn.Module:
    """Full-batch Adam (lr 0.01) for ``steps`` steps; returns the model in eval mode."""
    xt, yt = torch.tensor(x), torch.tensor(y)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    return model.eval()


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """The model as ONNX with a dynamic batch axis (the TorchScript-based exporter)."""
    torch.onnx.export(
        model,
        (example,),
        str(path),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    return path
