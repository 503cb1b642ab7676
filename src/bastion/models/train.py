"""A seeded training loop with a validation split, progress and resumable checkpoints.

Hardening recipes plug in through ``loss_fn(model, x, y) -> loss`` and ``select_fn``
(a score on the validation set used for model selection)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from bastion.data.dataset import Dataset
from bastion.errors import ConfigError
from bastion.models.predict import accuracy
from bastion.models.resume import load_checkpoint, restoring
from bastion.progress import task

log = logging.getLogger(__name__)
CHECKPOINT_KEYS = ("model", "optimizer", "generator", "result", "best_state", "best_score")
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
SelectFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], float]


@dataclass
class TrainResult:
    epochs_run: int
    train_loss: list[float] = field(default_factory=list)
    val_accuracy: list[float] = field(default_factory=list)
    val_score: list[float] = field(default_factory=list)
    best_epoch: int = -1
    seconds: float = 0.0
    resumed_from: int = 0
    stopped_early: bool = False


def cross_entropy_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


def split_validation(
    data: Dataset, fraction: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"validation fraction must be in [0, 1), got {fraction}")
    perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed))
    n_val = int(round(fraction * len(data)))
    val, tr = perm[:n_val], perm[n_val:]
    return data.x[tr], data.y[tr], data.x[val], data.y[val]


def train_model(
    model: nn.Module,
    data: Dataset,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    val_fraction: float = 0.1,
    seed: int = 0,
    loss_fn: LossFn = cross_entropy_loss,
    select_fn: SelectFn | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler_fn: Callable[[torch.optim.Optimizer, int], object] | None = None,
    checkpoint: str | Path | None = None,
    device: str | torch.device = "cpu",
    description: str = "training",
    stop_fn: Callable[[TrainResult], bool] | None = None,
) -> TrainResult:
    """Train ``model`` in place with Adam (or ``optimizer``); keep the weights of the epoch with
    the best ``select_fn`` score on the validation split (accuracy by default). With
    ``checkpoint``, state is saved after each epoch and a rerun resumes from it. ``stop_fn``
    (called after each epoch) ends training early when it returns True."""
    if epochs < 1 or batch_size < 1 or lr <= 0:
        raise ConfigError("epochs and batch_size must be >= 1 and lr > 0")
    torch.manual_seed(seed)
    model.to(device)
    x_tr, y_tr, x_val, y_val = (t.to(device) for t in split_validation(data, val_fraction, seed))
    opt = optimizer or torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    steps_per_epoch = (len(x_tr) + batch_size - 1) // batch_size
    sched = scheduler_fn(opt, epochs * steps_per_epoch) if scheduler_fn else None
    score = select_fn or accuracy
    result = TrainResult(epochs_run=0)
    best_state, best_score = None, -float("inf")
    gen = torch.Generator().manual_seed(seed)
    ckpt = Path(checkpoint) if checkpoint else None
    if ckpt and ckpt.exists():
        state = load_checkpoint(ckpt, keys=CHECKPOINT_KEYS, map_location=device)
        with restoring(ckpt):
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["optimizer"])
            if sched is not None and state.get("scheduler"):
                sched.load_state_dict(state["scheduler"])
            gen.set_state(state["generator"])
            result = TrainResult(**state["result"])
            result.resumed_from = result.epochs_run
            best_state, best_score = state["best_state"], float(state["best_score"])
        log.info("resuming %s from epoch %d", description, result.epochs_run)
    start = time.perf_counter() - result.seconds
    with task(description, epochs * steps_per_epoch) as advance:
        advance(result.epochs_run * steps_per_epoch)
        for epoch in range(result.epochs_run, epochs):
            if result.stopped_early:
                break
            model.train()
            perm = torch.randperm(len(x_tr), generator=gen).to(device)
            total = 0.0
            for i in range(0, len(x_tr), batch_size):
                idx = perm[i : i + batch_size]
                loss = loss_fn(model, x_tr[idx], y_tr[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if sched is not None:
                    sched.step()
                total += float(loss.detach()) * len(idx)
                advance()
            model.eval()
            result.train_loss.append(total / len(x_tr))
            has_val = len(x_val) > 0
            result.val_accuracy.append(accuracy(model, x_val, y_val) if has_val else float("nan"))
            current = score(model, x_val, y_val) if has_val else -result.train_loss[-1]
            result.val_score.append(current)
            if current >= best_score:
                best_score, result.best_epoch = current, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            result.epochs_run = epoch + 1
            result.seconds = time.perf_counter() - start
            if stop_fn is not None and stop_fn(result):
                result.stopped_early = True
            if ckpt:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                torch.save(
                    {
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "scheduler": sched.state_dict()
                        if sched is not None and hasattr(sched, "state_dict")
                        else None,
                        "generator": gen.get_state(),
                        "result": asdict(result),
                        "best_state": best_state,
                        "best_score": best_score,
                    },
                    tmp,
                )
                tmp.replace(ckpt)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - start
    return result
