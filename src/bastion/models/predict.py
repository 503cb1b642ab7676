"""The one batched, gradient-free forward pass every module reads its model's answers with.

``predict_logits`` runs ``model`` in eval mode (its mode restored afterwards, even on error)
over ``x`` in batches; ``predict_labels`` takes their argmax, and ``accuracy`` compares
those with labels. Used by the attacks, the probes, the defenses and the guard alike, so
there is one place that batches, switches mode and turns off autograd."""

from __future__ import annotations

import torch
from torch import nn

BATCH = 1024


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, *, batch_size: int = BATCH) -> torch.Tensor:
    """Logits (N, K) of ``model`` on ``x``, batched, in eval mode."""
    was_training = model.training
    model.eval()
    try:
        parts = [model(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)]
    finally:
        model.train(was_training)
    if not parts:
        return torch.empty(0, 0)
    return torch.cat(parts)


def predict_labels(model: nn.Module, x: torch.Tensor, *, batch_size: int = BATCH) -> torch.Tensor:
    """Predicted labels (N,) of ``model`` on ``x``."""
    if x.shape[0] == 0:
        return torch.empty(0, dtype=torch.long, device=x.device)
    return predict_logits(model, x, batch_size=batch_size).argmax(1)


def accuracy(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = BATCH
) -> float:
    """Top-1 accuracy of ``model`` on (x, y); 0.0 for no samples."""
    if x.shape[0] == 0:
        return 0.0
    pred = predict_labels(model, x, batch_size=batch_size)
    return float((pred == y.to(pred.device)).float().mean())
