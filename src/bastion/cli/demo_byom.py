"""The demo's "your model" step: a classifier Bastion did not make, assessed as a user would.

A small torch MLP is trained on scikit-learn's breast-cancer data as it comes (30 raw,
unscaled features; standardisation inside the model), exported to ONNX, and the ONNX file
plus a CSV of the raw rows are assessed through the same loaders `bastion assess --model
FILE --data FILE.csv` uses: tabular input spec from the training rows, ε relative to each
feature's range, APGD-T left out for 2 classes, membership not measured (its training rows
are not declared)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from bastion.assess.schema import Budgets, ThreatModel

DEMO_THREAT = ThreatModel(
    eps=[0.05],
    attacks=["fgsm", "pgd", "ensemble"],
    budgets=Budgets(
        n_eval=114,
        pgd_steps=10,
        apgd_steps=20,
        queries=200,
        n_blackbox=30,
        extraction_queries=[100, 500],
    ),
)


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def make_user_files(out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Write ``bc.csv`` (label first, raw features) and ``bc.onnx`` under ``out``."""
    from sklearn.datasets import load_breast_cancer

    out.mkdir(parents=True, exist_ok=True)
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float32), raw.target
    csv = out / "bc.csv"
    header = ",".join(["label", *(n.replace(" ", "_") for n in raw.feature_names)])
    lines = [",".join([str(int(t)), *(f"{v:.6g}" for v in r)]) for r, t in zip(x, y, strict=True)]
    csv.write_text(header + "\n" + "\n".join(lines) + "\n")
    torch.manual_seed(seed)
    train = np.random.default_rng(seed).permutation(len(y))[: int(0.8 * len(y))]
    xt, yt = torch.tensor(x[train]), torch.tensor(y[train])
    model = nn.Sequential(
        _Standardize(xt.mean(0), xt.std(0) + 1e-6), nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), yt).backward()
        opt.step()
    model.eval()
    onnx = out / "bc.onnx"
    torch.onnx.export(
        model,
        (xt[:2],),
        str(onnx),
        input_names=["x"],
        output_names=["logits"],
        dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        dynamo=False,
    )
    return csv, onnx
