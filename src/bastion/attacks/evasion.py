"""White-box evasion attacks: plain functions over tensors.

Every attack takes ``model`` and a batch ``x`` (N, ...) — images (N, C, H, W) or feature
vectors (N, D) — with labels ``y`` at call time, hyperparameters keyword-only, returns
``x_adv`` with ``‖x_adv − x‖ ≤ eps`` and ``x_adv`` within ``bounds``: a ``(low, high)`` pair
or a per-feature :class:`Box`, whose frozen features keep their clean values. The model is
put in eval mode and its mode restored after. Everything stays in torch on the inputs'
device.

- :func:`fgsm` — FGSM / fast gradient method (Goodfellow et al. 2015).
- :func:`pgd` — PGD with random start and restarts, L∞ or L2 (Madry et al. 2018).
- :func:`apgd`, :func:`apgd_targeted`, :func:`standard_ensemble` — APGD-CE, APGD-T and the
  APGD-CE → APGD-T ensemble (Croce & Hein 2020), in :mod:`bastion.attacks._apgd`.

``ATTACKS`` maps the names a threat model uses to callables with one keyword signature,
and :func:`robust_mask` turns any of them into per-point robustness for robust-accuracy
evaluation: clean-misclassified points are never attacked and, with the active set, a point
stops costing forward/backward passes as soon as it is fooled.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bastion.attacks._apgd import (
    apgd,
    apgd_targeted,
    check_apgd,
    dlr_loss,
    mask_frozen,
    standard_ensemble,
)
from bastion.attacks._ball import (
    NORMS,
    Bounds,
    Box,
    as_box,
    check_args,
    check_budget,
    clip,
    eval_mode,
    fast_layout,
    project,
    random_start,
    span,
    steepest_step,
)
from bastion.errors import AttackError

log = logging.getLogger(__name__)

__all__ = [
    "ATTACKS",
    "NORMS",
    "Bounds",
    "Box",
    "apgd",
    "apgd_targeted",
    "as_box",
    "check_args",
    "clip",
    "dlr_loss",
    "eval_mode",
    "fgsm",
    "limits",
    "mask_frozen",
    "pgd",
    "project",
    "random_start",
    "robust_mask",
    "span",
    "standard_ensemble",
    "steepest_step",
    "width",
]


def limits(
    bounds: Bounds, like: torch.Tensor
) -> tuple[float, float] | tuple[torch.Tensor, torch.Tensor]:
    """``(lo, hi)`` of ``bounds`` ready for arithmetic with ``like``: the plain numbers of a
    ``(low, high)`` pair of floats (the fast path, bit-identical to before), else the Box's
    tensors on ``like``'s device and dtype (broadcastable to one sample)."""
    if not isinstance(bounds, Box):
        lo, hi = bounds
        if not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor):
            return float(lo), float(hi)
    box = as_box(bounds).to(like)
    return box.lo, box.hi


def width(bounds: Bounds) -> float:
    """A scalar scale of ``bounds``: ``high − low`` for a pair of numbers, else the Box's
    mean width (:func:`span`)."""
    if not isinstance(bounds, Box):
        lo, hi = bounds
        if not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor):
            return float(hi) - float(lo)
    return span(bounds)


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


# ---------------------------------------------------------------------------- registry

AttackFn = Callable[..., torch.Tensor]


Gen = torch.Generator | None


def _fgsm_entry(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    steps: int = 1,
    restarts: int = 1,
    generator: Gen = None,
    early_stop: bool = False,
) -> torch.Tensor:
    return fgsm(model, x, y, eps=eps, norm=norm, bounds=bounds)


def _pgd_entry(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    steps: int = 20,
    restarts: int = 1,
    generator: Gen = None,
    early_stop: bool = False,
    step_size: float | None = None,
    random_init: bool = True,
) -> torch.Tensor:
    return pgd(
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        bounds=bounds,
        steps=steps,
        restarts=restarts,
        generator=generator,
        early_stop=early_stop,
        step_size=step_size,
        random_init=random_init,
    )


def _apgd_ce_entry(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    steps: int = 100,
    restarts: int = 1,
    generator: Gen = None,
    early_stop: bool = False,
    loss: str = "ce",
    rho: float = 0.75,
) -> torch.Tensor:
    return apgd(
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        bounds=bounds,
        steps=steps,
        restarts=restarts,
        generator=generator,
        early_stop=early_stop,
        loss=loss,
        rho=rho,
    )


def _apgd_t_entry(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    steps: int = 100,
    restarts: int = 1,
    generator: Gen = None,
    early_stop: bool = False,
    n_target_classes: int = 9,
    rho: float = 0.75,
) -> torch.Tensor:
    return apgd_targeted(
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        bounds=bounds,
        steps=steps,
        restarts=restarts,
        generator=generator,
        early_stop=early_stop,
        n_target_classes=n_target_classes,
        rho=rho,
    )


def _ensemble_entry(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    steps: int = 100,
    restarts: int = 1,
    generator: Gen = None,
    early_stop: bool = False,
    n_target_classes: int = 9,
) -> torch.Tensor:
    return standard_ensemble(
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        bounds=bounds,
        steps=steps,
        restarts=restarts,
        generator=generator,
        early_stop=early_stop,
        n_target_classes=n_target_classes,
    )


#: Attack name → callable ``(model, x, y, *, eps, norm, bounds, steps, restarts, generator,
#: early_stop, **attack_specific)``; keywords that do not apply (``steps`` for FGSM) are
#: ignored. Attack-specific extras: pgd ``step_size``, ``random_init``; apgd-ce ``loss``,
#: ``rho``; apgd-t ``n_target_classes``, ``rho``; ensemble ``n_target_classes``.
ATTACKS: dict[str, AttackFn] = {
    "fgsm": _fgsm_entry,
    "pgd": _pgd_entry,
    "apgd-ce": _apgd_ce_entry,
    "apgd-t": _apgd_t_entry,
    "ensemble": _ensemble_entry,
}


def get_attack(name: str) -> AttackFn:
    """The registered attack ``name``; an unknown name lists the valid ones."""
    if name not in ATTACKS:
        raise AttackError(f"unknown attack {name!r}: choose one of {', '.join(sorted(ATTACKS))}")
    return ATTACKS[name]


def robust_mask(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    attack: str,
    eps: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    batch_size: int = 256,
    early_stop: bool = True,
    post: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    **kw: Any,
) -> torch.Tensor:
    """Per-point robustness under ``attack`` at ``eps``: a bool tensor (N,) on ``x``'s device,
    True where the point is still correctly classified after the attack.

    Points misclassified when clean are False and never attacked. The rest are attacked in
    batches of ``batch_size`` with the active set on (``early_stop=True``): a point stops
    costing passes once an iterate fools the model. The result equals that of the full loop
    checking every iterate (for APGD and the ensemble, exactly AutoAttack's; for PGD it can
    only be lower than the last-iterate accuracy of a fixed-step loop). Every adversarial
    point is checked with one more forward pass. On CPU the convolution weights are held
    channels-last for the duration (:func:`fast_layout`). ``kw`` goes to the attack
    (``steps``, ``restarts``, ``generator`` and the attack-specific extras of ``ATTACKS``).

    ``post(adv, x_clean)``, when given, maps the attack's points (and the clean rows they came
    from, same shape) to the points actually judged, before the final robustness check: e.g.
    rounding integer features back to integers or re-applying domain constraints. A point
    counts as fooled only if its post-processed version is misclassified; ``post`` must keep
    the shape (it is not re-projected, so keep its output within ``bounds`` and ε yourself).

    To trace a robustness curve cheaply, call it for increasing ε on the survivors of the
    previous ε only: a point fooled at ε stays fooled at any larger ε."""
    fn = get_attack(attack)
    norm = check_args(x, y, eps, norm, bounds)
    if int(batch_size) != batch_size or batch_size < 1:
        raise AttackError(f"batch_size must be an integer >= 1, got {batch_size}")
    allowed = [p for p in inspect.signature(fn).parameters if p not in ("model", "x", "y")]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise AttackError(
            f"bad option for attack {attack!r}: {', '.join(unknown)}; it takes {', '.join(allowed)}"
        )
    if "steps" in kw or "restarts" in kw:
        check_budget(steps=kw.get("steps", 1), restarts=kw.get("restarts", 1))
    if attack.startswith("apgd") or attack == "ensemble":
        check_apgd(
            steps=kw.get("steps", 100),
            restarts=kw.get("restarts", 1),
            rho=kw.get("rho", 0.75),
            loss=kw.get("loss", "ce"),
        )
    mask = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    with eval_mode(model), fast_layout(model), torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i : i + batch_size].detach(), y[i : i + batch_size]
            logits = model(xb)
            if yb.numel() and (int(yb.min()) < 0 or int(yb.max()) >= logits.shape[1]):
                raise AttackError(f"labels must be in [0, {logits.shape[1] - 1}] for this model")
            idx = (logits.argmax(1) == yb).nonzero().flatten()
            if idx.numel() == 0:
                continue
            if float(eps) == 0:
                mask[i + idx] = True
                continue
            xs = xb[idx]
            adv = fn(
                model, xs, yb[idx], eps=eps, norm=norm, bounds=bounds, early_stop=early_stop, **kw
            )
            if post is not None:
                adv = post(adv, xs)
                if not isinstance(adv, torch.Tensor) or adv.shape != xs.shape:
                    got = tuple(adv.shape) if isinstance(adv, torch.Tensor) else type(adv).__name__
                    raise AttackError(
                        f"post must return a tensor shaped like its input {tuple(xs.shape)}, "
                        f"got {got}"
                    )
            mask[i + idx] = model(adv).argmax(1) == yb[idx]
    log.debug("robust_mask %s eps=%s: %d/%d robust", attack, eps, int(mask.sum()), len(mask))
    return mask
