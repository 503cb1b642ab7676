"""FGSM and PGD: the first-order white-box attacks, plain functions over tensors.

- :func:`fgsm` — FGSM / fast gradient method (Goodfellow et al., "Explaining and
  Harnessing Adversarial Examples", ICLR 2015).
- :func:`pgd` — PGD with random start and restarts, L∞ or L2 (Madry et al., "Towards Deep
  Learning Models Resistant to Adversarial Attacks", ICLR 2018).

Re-exported by :mod:`bastion.attacks.evasion`, whose docstring states the common contract
(bounds, frozen features, eval mode).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from bastion.attacks._apgd import mask_frozen
from bastion.attacks._ball import (
    Bounds,
    check_args,
    check_budget,
    clip,
    eval_mode,
    project,
    random_start,
    steepest_step,
)
from bastion.errors import AttackError

__all__ = ["fgsm", "pgd"]


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    bounds: Bounds = (0.0, 1.0),
    targeted: bool = False,
    norm: str = "inf",
) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2015, "Explaining and Harnessing
    Adversarial Examples"): one step of size ε along the sign of the loss gradient (L∞), or
    along the L2-normalised gradient with ``norm='2'`` (the fast gradient method).
    ``targeted`` descends the loss towards the labels ``y`` instead."""
    norm = check_args(x, y, eps, norm, bounds)
    with eval_mode(model):
        x0 = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x0), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x0)
    step = steepest_step(mask_frozen(grad, bounds), norm) * (-eps if targeted else eps)
    return clip(x.detach() + project(step, eps, norm), bounds, ref=x.detach())


def _success(logits: torch.Tensor, y: torch.Tensor, targeted: bool) -> torch.Tensor:
    pred = logits.argmax(1)
    return pred == y if targeted else pred != y


def _pgd_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int,
    alpha: float,
    norm: str,
    random_init: bool,
    targeted: bool,
    bounds: Bounds,
    early_stop: bool,
    generator: torch.Generator | None,
    x_init: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One PGD run; returns (x_adv, success). Without ``early_stop`` success is judged on the
    last iterate; with it, on the first successful iterate (which is what is returned)."""
    if x_init is not None:
        delta = project(x_init.detach() - x, eps, norm)
    else:
        delta = random_start(x, eps, norm, generator) if random_init else torch.zeros_like(x)
    adv = clip(x + delta, bounds, ref=x)
    success = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    active = torch.arange(x.shape[0], device=x.device)
    cur, xa, ya = adv.clone(), x, y
    sign = -alpha if targeted else alpha
    for _ in range(steps):
        cur = cur.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = model(cur)
            loss = F.cross_entropy(logits, ya, reduction="sum")
            (grad,) = torch.autograd.grad(loss, cur)
        with torch.no_grad():
            cur = cur.detach()
            if early_stop:
                hit = _success(logits, ya, targeted)
                if hit.any():
                    adv[active[hit]], success[active[hit]] = cur[hit], True
                    keep = ~hit
                    active, cur, grad, xa, ya = (
                        active[keep],
                        cur[keep],
                        grad[keep],
                        xa[keep],
                        ya[keep],
                    )
                    if active.numel() == 0:
                        break
            step = sign * steepest_step(mask_frozen(grad, bounds), norm)
            cur = clip(xa + project(cur + step - xa, eps, norm), bounds, ref=xa)
    if active.numel():
        with torch.no_grad():
            adv[active] = cur
            success[active] = _success(model(cur), ya, targeted)
    return adv, success


def pgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    steps: int = 10,
    step_size: float | None = None,
    norm: str = "inf",
    restarts: int = 1,
    random_init: bool = True,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    early_stop: bool = False,
    generator: torch.Generator | None = None,
    x_init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Projected Gradient Descent (Madry et al. 2018, "Towards Deep Learning Models Resistant
    to Adversarial Attacks") under L∞ or L2 with a uniform random start and restarts (each
    restart only on the points not yet fooled). ``step_size`` defaults to 2.5·ε/steps.
    ``x_init`` (same shape as ``x``) warm-starts the first run from those points, projected
    into the ε-ball: e.g. the iterates of a smaller ε, when tracing a robustness curve.

    Returns the last iterate for every point (a fixed-step loop). With ``early_stop``
    (robust-accuracy evaluation) a point leaves the active set as soon as an iterate fools the
    model and that iterate is returned; the rest cost nothing more.

    Example::

        x_adv = pgd(model, x, y, eps=0.1, steps=20, step_size=0.01, norm="inf")
    """
    norm = check_args(x, y, eps, norm, bounds)
    check_budget(steps=steps, restarts=restarts)
    if step_size is not None and not step_size >= 0:
        raise AttackError(f"step_size must be a non-negative number, got {step_size}")
    if x_init is not None and x_init.shape != x.shape:
        raise AttackError(f"x_init has shape {tuple(x_init.shape)}, x has {tuple(x.shape)}")
    alpha = float(step_size) if step_size is not None else 2.5 * float(eps) / steps
    x = x.detach()
    out = x.clone()
    with eval_mode(model):
        todo = torch.arange(x.shape[0], device=x.device)
        for r in range(restarts):
            if todo.numel() == 0:
                break
            adv, hit = _pgd_run(
                model,
                x[todo],
                y[todo],
                eps=float(eps),
                steps=steps,
                alpha=alpha,
                norm=norm,
                random_init=random_init,
                targeted=targeted,
                bounds=bounds,
                early_stop=early_stop,
                generator=generator,
                x_init=x_init[todo] if x_init is not None and r == 0 else None,
            )
            out[todo] = adv
            todo = todo[~hit]
    return out
