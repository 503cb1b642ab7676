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
  APGD-CE → APGD-T ensemble (two of AutoAttack's four; Croce & Hein 2020), in
  :mod:`bastion.attacks._apgd`.
- FAB-T (:mod:`bastion.attacks.fab`) and the full AutoAttack standard version, APGD-CE →
  APGD-T → FAB-T → Square (:mod:`bastion.attacks.autoattack`), registered as ``autoattack``.

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
from bastion.attacks.fab import fab_targeted
from bastion.attacks.pgd import fgsm, pgd
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
    "fab_targeted",
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
    """APGD-CE → APGD-T (two of AutoAttack's four)."""
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


def _autoattack_entry(
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
    square_queries: int = 5000,
    square_p_init: float = 0.8,
) -> torch.Tensor:
    """AutoAttack's standard version: APGD-CE → APGD-T → FAB-T → Square."""
    # Imported here: the Square attack imports this module.
    from bastion.attacks.autoattack import autoattack

    return autoattack(
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
        square_queries=square_queries,
        square_p_init=square_p_init,
    )


#: Attack name → callable ``(model, x, y, *, eps, norm, bounds, steps, restarts, generator,
#: early_stop, **attack_specific)``; keywords that do not apply (``steps`` for FGSM) are
#: ignored. Attack-specific extras: pgd ``step_size``, ``random_init``; apgd-ce ``loss``,
#: ``rho``; apgd-t ``n_target_classes``, ``rho``; ensemble (APGD-CE → APGD-T, two of
#: AutoAttack's four) ``n_target_classes``; fab-t ``n_target_classes``; autoattack (the full
#: standard version, APGD-CE → APGD-T → FAB-T → Square) ``n_target_classes``,
#: ``square_queries``, ``square_p_init``. ``steps`` is the iteration budget of every
#: gradient member (AutoAttack: 100).
ATTACKS: dict[str, AttackFn] = {
    "fgsm": _fgsm_entry,
    "pgd": _pgd_entry,
    "apgd-ce": _apgd_ce_entry,
    "apgd-t": _apgd_t_entry,
    "ensemble": _ensemble_entry,
    "fab-t": fab_targeted,
    "autoattack": _autoattack_entry,
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
    checking every iterate (for APGD, the ensemble, FAB-T and autoattack, exactly AutoAttack's
    decision; for PGD it can only be lower than the last-iterate accuracy of a fixed-step
    loop). Every adversarial point is checked with one more forward pass. On CPU the convolution weights are held
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
    if attack.startswith("apgd") or attack in ("ensemble", "autoattack"):
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
