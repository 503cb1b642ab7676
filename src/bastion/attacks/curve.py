"""A robustness curve (robust accuracy against ε) by PGD with ε-continuation.

Tracing a curve with one independent attack per ε repeats most of the work: a point fooled
at ε stays fooled at every larger ε, and the adversarial iterate found inside a small ball
is a good start inside the next, larger one. :func:`pgd_curve` walks an increasing ε grid
once: the first ε gets a full PGD run (``first_steps``); each later ε attacks only the
points still robust, warm-started from their previous iterate, for ``steps`` more steps of
``step_fraction``·ε. Every step keeps the active set (a point leaves as soon as it is
fooled).

On the benchmark's Fashion-MNIST CNNs, 10 ε from 0.02 to 0.2 cost 2.4× one PGD-20
evaluation at ε=0.1 (7–16× less than 10 independent PGD-20 runs) and stay within 0.9 points
of those runs, stronger than them at the larger ε: docs/benchmarks/evasion.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
from torch import nn

from bastion.attacks._ball import Bounds
from bastion.attacks.evasion import check_args, eval_mode, fast_layout
from bastion.attacks.pgd import _pgd_run
from bastion.errors import AttackError


def pgd_curve(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps_grid: Sequence[float],
    *,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    first_steps: int = 10,
    steps: int = 4,
    step_fraction: float = 0.2,
    batch_size: int = 256,
) -> torch.Tensor:
    """Per-point robustness at each ε of ``eps_grid``: a bool tensor (len(grid), N), True
    where the point is still correctly classified after the attack at that ε (rows are
    monotone: robust at ε implies robust at every smaller ε of the grid). Its row means are
    the curve. Clean-misclassified points are False everywhere and never attacked.

    Example::

        robust = pgd_curve(model, x, y, [0.02 * k for k in range(1, 11)])
        curve = robust.float().mean(1)
    """
    try:
        grid = [float(e) for e in eps_grid]
    except (TypeError, ValueError):
        raise AttackError(f"eps_grid must hold numbers, got {eps_grid!r}") from None
    if not grid:
        raise AttackError("eps_grid is empty: give at least one ε")
    if any(not math.isfinite(e) or e < 0 for e in grid):
        raise AttackError(f"every eps must be a non-negative number, got {grid}")
    if any(b <= a for a, b in itertools.pairwise(grid)):
        raise AttackError(f"eps_grid must be strictly increasing, got {grid}")
    norm = check_args(x, y, grid[-1], norm, bounds)  # validates x, y and bounds once
    if int(first_steps) < 1 or int(steps) < 1:
        raise AttackError(f"first_steps and steps must be >= 1, got {first_steps} and {steps}")
    if not 0 < step_fraction <= 1:
        raise AttackError(f"step_fraction must be in (0, 1], got {step_fraction}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise AttackError(f"batch_size must be an integer >= 1, got {batch_size}")
    x, y = x.detach(), y.detach()
    out = torch.zeros(len(grid), x.shape[0], dtype=torch.bool, device=x.device)
    with eval_mode(model), fast_layout(model), torch.no_grad():
        alive = (
            torch.cat(
                [
                    model(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]
                    for i in range(0, x.shape[0], batch_size)
                ]
            )
            if x.shape[0]
            else torch.zeros(0, dtype=torch.bool, device=x.device)
        )
        current = x.clone()
        for k, eps in enumerate(grid):
            idx = alive.nonzero().flatten()
            for i in range(0, idx.numel(), batch_size):
                j = idx[i : i + batch_size]
                first = k == 0  # a full run from x; later ε warm-start from the last iterate
                adv, fooled = _pgd_run(
                    model,
                    x[j],
                    y[j],
                    eps=eps,
                    norm=norm,
                    bounds=bounds,
                    steps=first_steps if first else steps,
                    alpha=2.5 * eps / first_steps if first else step_fraction * eps,
                    random_init=False,
                    targeted=False,
                    early_stop=True,
                    generator=None,
                    x_init=None if first else current[j],
                )
                current[j] = adv
                alive[j] = ~fooled  # _pgd_run has checked the returned iterate
            out[k] = alive
    return out
