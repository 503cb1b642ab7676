"""Adversarial training: PGD-AT, TRADES and fast AT, plugged into ``train_model``.

- PGD-AT (Madry et al. 2018, "Towards Deep Learning Models Resistant to Adversarial
  Attacks"): minimise the cross-entropy on the PGD adversary's points (min-max training).
- TRADES (Zhang et al. 2019, "Theoretically Principled Trade-off between Robustness and
  Accuracy"): ``CE(f(x), y) + β · KL(f(x) ‖ f(x'))`` where ``x'`` maximises the KL term in
  the ε-ball; β trades accuracy for robustness (β = 0 is natural training).
- Fast AT (Wong et al. 2020, "Fast is better than free"): one FGSM step of size α = 1.25 ε
  from a uniform random start, a cyclic learning rate, and a PGD check on a held-out batch
  after each epoch: when the PGD accuracy collapses (catastrophic overfitting) training stops
  and the weights roll back to the best epoch.

Model selection for every recipe here is on robust validation accuracy (PGD on a held-out
batch), not on clean accuracy (Rice et al. 2020 show robust overfitting makes the last epoch
a poor choice).

The training-time adversary returns the last PGD iterate for every point (unlike the
evaluation attack ``bastion.attacks.evasion.pgd``, which keeps the clean point where it
failed): training must see perturbed points whether or not they fool the model yet.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from bastion.attacks.evasion import (
    Bounds,
    check_args,
    clip,
    eval_mode,
    mask_frozen,
    pgd,
    project,
    random_start,
    steepest_step,
)
from bastion.errors import ConfigError
from bastion.models.train import LossFn, SelectFn, TrainResult

log = logging.getLogger(__name__)


def training_adversary(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    random_init: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD's last iterate (Madry et al. 2018) for training: maximise the cross-entropy in the
    ε-ball around ``x`` and return the final point for every sample. With ``steps=1`` and
    ``step_size=1.25·ε`` this is the FGSM-with-random-start step of Wong et al. 2020."""
    norm = check_args(x, y, eps, norm, bounds)
    x = x.detach()
    with eval_mode(model):
        delta = random_start(x, eps, norm, generator) if random_init else torch.zeros_like(x)
        adv = clip(x + delta, bounds, ref=x)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.cross_entropy(model(adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                step = steepest_step(mask_frozen(grad, bounds), norm) * step_size
                adv = clip(x + project(adv + step - x, eps, norm), bounds, ref=x)
    return adv.detach()


def trades_adversary(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """TRADES' inner maximisation (Zhang et al. 2019, Alg. 1): start at ``x + 0.001·N(0, I)``
    and ascend ``KL(f(x) ‖ f(x'))`` by PGD in the ε-ball."""
    norm = check_args(x, torch.zeros(len(x)), eps, norm, bounds)
    x = x.detach()
    with eval_mode(model):
        with torch.no_grad():
            p_clean = F.softmax(model(x), dim=1)
        noise = torch.randn(x.shape, generator=generator, device="cpu").to(x.device)
        adv = clip(x + 0.001 * noise, bounds, ref=x)
        for _ in range(steps):
            adv.requires_grad_(True)
            loss = F.kl_div(F.log_softmax(model(adv), dim=1), p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(loss, adv)
            with torch.no_grad():
                step = steepest_step(mask_frozen(grad, bounds), norm) * step_size
                adv = clip(x + project(adv + step - x, eps, norm), bounds, ref=x)
    return adv.detach()


def pgd_at_loss(
    *,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    seed: int = 0,
) -> LossFn:
    """Madry et al. 2018: cross-entropy on PGD points only."""
    gen = torch.Generator().manual_seed(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = training_adversary(
            model,
            x,
            y,
            eps=eps,
            steps=steps,
            step_size=step_size,
            norm=norm,
            bounds=bounds,
            generator=gen,
        )
        return F.cross_entropy(model(adv), y)

    return loss


def trades_loss(
    *,
    beta: float,
    eps: float,
    steps: int,
    step_size: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    seed: int = 0,
) -> LossFn:
    """Zhang et al. 2019: ``CE(f(x), y) + β · KL(f(x) ‖ f(x'))`` (batch mean)."""
    if beta < 0:
        raise ConfigError(f"TRADES beta must be >= 0 (0 = natural training), got {beta}")
    gen = torch.Generator().manual_seed(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = trades_adversary(
            model,
            x,
            eps=eps,
            steps=steps,
            step_size=step_size,
            norm=norm,
            bounds=bounds,
            generator=gen,
        )
        logits = model(x)
        robust = F.kl_div(
            F.log_softmax(model(adv), dim=1), F.softmax(logits, dim=1), reduction="batchmean"
        )
        return F.cross_entropy(logits, y) + beta * robust

    return loss


def fast_at_loss(
    *, eps: float, alpha: float, norm: str = "inf", bounds: Bounds = (0.0, 1.0), seed: int = 0
) -> LossFn:
    """Wong et al. 2020: cross-entropy on one FGSM step of size α from a random start."""
    gen = torch.Generator().manual_seed(seed)

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adv = training_adversary(
            model, x, y, eps=eps, steps=1, step_size=alpha, norm=norm, bounds=bounds, generator=gen
        )
        return F.cross_entropy(model(adv), y)

    return loss


def robust_accuracy(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 10,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    seed: int = 0,
    batch_size: int = 512,
) -> float:
    """Accuracy under PGD (Madry et al. 2018) with a fixed seed, so epochs compare fairly."""
    if len(x) == 0:
        return float("nan")
    gen = torch.Generator().manual_seed(seed)
    correct = 0
    for i in range(0, len(x), batch_size):
        xb, yb = x[i : i + batch_size], y[i : i + batch_size]
        adv = pgd(
            model,
            xb,
            yb,
            eps=eps,
            steps=steps,
            norm=norm,
            bounds=bounds,
            early_stop=True,
            generator=gen,
        )
        with torch.no_grad(), eval_mode(model):
            correct += int((model(adv).argmax(1) == yb).sum())
    return correct / len(x)


def robust_select(
    *,
    eps: float,
    steps: int = 10,
    n: int = 512,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    seed: int = 0,
) -> SelectFn:
    """A ``select_fn``: PGD accuracy on the first ``n`` validation points (the held-out batch)."""

    def select(model: nn.Module, x_val: torch.Tensor, y_val: torch.Tensor) -> float:
        return robust_accuracy(
            model, x_val[:n], y_val[:n], eps=eps, steps=steps, norm=norm, bounds=bounds, seed=seed
        )

    return select


@dataclass
class CollapseGuard:
    """Wong et al. 2020's guard against catastrophic overfitting, as a ``stop_fn``: stop when
    the held-out PGD accuracy (the selection score) falls more than ``drop`` below its best;
    ``train_model`` then restores the best epoch's weights (the roll-back)."""

    drop: float = 0.2
    collapsed_at: int | None = None

    def __call__(self, result: TrainResult) -> bool:
        scores = result.val_score
        if len(scores) < 2:
            return False
        best = max(scores[:-1])
        if scores[-1] < best - self.drop:
            self.collapsed_at = len(scores) - 1
            log.warning(
                "catastrophic overfitting at epoch %d: PGD accuracy %.3f, best %.3f; stopping and "
                "rolling back to epoch %d",
                len(scores) - 1,
                scores[-1],
                best,
                result.best_epoch,
            )
            return True
        return False


def cyclic_lr(peak_at: float = 0.4) -> Callable[[torch.optim.Optimizer, int], object]:
    """A ``scheduler_fn``: the triangular one-cycle schedule of Wong et al. 2020 (0 → the
    optimizer's lr at ``peak_at`` of training → 0), stepped once per batch."""
    if not 0.0 < peak_at < 1.0:
        raise ConfigError(f"peak_at must be in (0, 1), got {peak_at}")

    def make(opt: torch.optim.Optimizer, total_steps: int) -> object:
        up = max(1, int(peak_at * total_steps))
        down = max(1, total_steps - up)

        def factor(step: int) -> float:
            return min(1.0, (step + 1) / up) if step < up else max(0.0, (total_steps - step) / down)

        return torch.optim.lr_scheduler.LambdaLR(opt, factor)

    return make
