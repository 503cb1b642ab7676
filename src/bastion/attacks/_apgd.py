"""Auto-PGD (APGD) and the standard ensemble of Croce & Hein 2020, "Reliable evaluation of
adversarial robustness with an ensemble of diverse parameter-free attacks" (ICML 2020).

The algorithm follows AutoAttack's reference implementation (``autopgd_base.py``, standard
version) step for step: a random start on the ε-sphere, a first step of size 2ε, momentum
0.75 after the first iteration, checkpoints at 22 % of the budget shrinking by 3 % down to
6 %, and at each checkpoint the step size is halved and the iterate reset to the best point
so far where the loss rose in at most ρ = 0.75 of the steps since the last checkpoint, or
the best loss did not improve and the step was not halved last time. The losses are
cross-entropy, DLR and the targeted DLR of APGD-T (targets: the 2nd to 10th most likely
classes of the clean input). A point counts as fooled as soon as any iterate is
misclassified.

With ``early_stop=True`` (robust-accuracy evaluation) a point leaves the active set the
moment it is misclassified, so it costs no further forward or backward passes. Every
per-sample quantity (step size, best point, loss history) is independent of the other
samples, so the robust accuracy is exactly the one the full loop gives; only the returned
example of a fooled point differs (the first misclassified iterate rather than the last).

Not part of the ensemble here: FAB-T and Square from AutoAttack's standard list (their
marginal gain over APGD-CE + APGD-T is at most a few tenths of a point on the models in the
paper; Square's role against gradient masking is covered by the probe's sanity checks).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from bastion.attacks._ball import (
    Bounds,
    Box,
    check_args,
    check_budget,
    clip,
    eval_mode,
    expand,
    noise,
)
from bastion.errors import AttackError

LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
LOSSES = ("ce", "dlr")


def _ce(logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None) -> torch.Tensor:
    return F.cross_entropy(logits, y, reduction="none")


def dlr_loss(
    logits: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
) -> torch.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020, eq. 3): ``−(z_y − max_{i≠y} z_i) /
    (z_π1 − z_π3)``, invariant to shifts and rescaling of the logits. With ``target``, the
    targeted form of APGD-T: ``−(z_y − z_t) / (z_π1 − (z_π3 + z_π4)/2)``."""
    zs, order = logits.sort(dim=1)
    zy = logits.gather(1, y[:, None])[:, 0]
    if target is None:
        y_top = (order[:, -1] == y).to(logits.dtype)
        other = zs[:, -2] * y_top + zs[:, -1] * (1 - y_top)
        return -(zy - other) / (zs[:, -1] - zs[:, -3] + 1e-12)
    zt = logits.gather(1, target[:, None])[:, 0]
    return -(zy - zt) / (zs[:, -1] - 0.5 * (zs[:, -3] + zs[:, -4]) + 1e-12)


def mask_frozen(grad: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """``grad`` with the frozen features of a :class:`Box` zeroed (unchanged otherwise), so a
    normalised step spends its whole budget on the features an attacker may change."""
    if isinstance(bounds, Box) and bounds.frozen is not None:
        return grad.masked_fill(bounds.frozen.to(grad.device), 0)
    return grad


def _loss_grad(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, loss_fn: LossFn
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits, per-sample loss and its input gradient at ``x`` (one forward + backward)."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        loss = loss_fn(logits, y, target)
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return logits.detach(), loss.detach(), grad


def _start(
    x: torch.Tensor, eps: float, norm: str, bounds: Bounds, gen: torch.Generator | None
) -> torch.Tensor:
    """AutoAttack's start: a random direction scaled onto the ε-sphere, clipped to bounds."""
    if norm == "inf":
        t = 2 * noise(x.shape, "rand", gen, x.device, x.dtype) - 1
        scale = t.flatten(1).abs().amax(1)
    else:
        t = noise(x.shape, "randn", gen, x.device, x.dtype)
        scale = t.flatten(1).norm(dim=1)
    return clip(x + eps * t / (expand(scale, x) + 1e-12), bounds, ref=x)


def _to_ball(
    x: torch.Tensor, z: torch.Tensor, eps: float, norm: str, bounds: Bounds
) -> torch.Tensor:
    """Project ``z`` onto the ε-ball around ``x`` intersected with the box ``bounds``."""
    if norm == "inf":
        return clip(torch.minimum(torch.maximum(z, x - eps), x + eps), bounds, ref=x)
    d = z - x
    n = expand(d.flatten(1).norm(dim=1), x)
    return clip(x + d / (n + 1e-12) * n.clamp(max=eps), bounds, ref=x)


def _direction(grad: torch.Tensor, norm: str) -> torch.Tensor:
    if norm == "inf":
        return grad.sign()
    return grad / (expand(grad.flatten(1).norm(dim=1), grad) + 1e-12)


def _run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor | None,
    *,
    eps: float,
    norm: str,
    steps: int,
    loss_fn: LossFn,
    bounds: Bounds,
    rho: float,
    early_stop: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One APGD run over a batch. Returns (x_adv, fooled, best_loss): for fooled points a
    misclassified iterate, for the others the highest-loss iterate."""
    n = x.shape[0]
    k, k_min, k_decr = (
        max(int(0.22 * steps), 1),
        max(int(0.06 * steps), 1),
        max(int(0.03 * steps), 1),
    )
    x_adv = _start(x, eps, norm, bounds, generator)
    logits, loss, grad = _loss_grad(model, x_adv, y, target, loss_fn)
    ok = logits.argmax(1) == y
    out, fooled, out_loss = x_adv.clone(), ~ok, loss.clone()
    # Per-sample state of the points still being attacked (rows compacted with `pos`).
    pos = torch.arange(n, device=x.device)
    s = {
        "x": x,
        "y": y,
        "x_adv": x_adv,
        "x_old": x_adv.clone(),
        "x_best": x_adv.clone(),
        "grad": grad,
        "grad_best": grad.clone(),
        "loss_best": loss.clone(),
        "step": torch.full((n,), 2.0 * eps, device=x.device, dtype=x.dtype),
        "loss_last": loss.clone(),
        "reduced_last": torch.ones(n, dtype=torch.bool, device=x.device),
    }
    if target is not None:
        s["target"] = target
    hist = torch.zeros(steps, n, device=x.device, dtype=loss.dtype)

    def keep(mask: torch.Tensor) -> None:
        nonlocal pos, hist
        for name in s:
            s[name] = s[name][mask]
        pos, hist = pos[mask], hist[:, mask]

    if early_stop and fooled.any():
        keep(ok)
    counter = 0
    for i in range(steps):
        if pos.numel() == 0:
            break
        with torch.no_grad():
            xa, xo, xc = s["x_adv"], s["x_old"], s["x"]
            momentum = 0.75 if i > 0 else 1.0
            direction = _direction(mask_frozen(s["grad"], bounds), norm)
            z = _to_ball(xc, xa + expand(s["step"], xa) * direction, eps, norm, bounds)
            z = _to_ball(
                xc, xa + (z - xa) * momentum + (xa - xo) * (1 - momentum), eps, norm, bounds
            )
            s["x_old"], s["x_adv"] = xa, z
        logits, loss, grad = _loss_grad(model, z, s["y"], s.get("target"), loss_fn)
        s["grad"] = grad
        with torch.no_grad():
            miss = logits.argmax(1) != s["y"]
            if miss.any():
                at = pos[miss]
                out[at], fooled[at], out_loss[at] = z[miss], True, loss[miss]
            hist[i] = loss
            better = loss > s["loss_best"]
            s["x_best"] = torch.where(expand(better, z), z, s["x_best"])
            s["grad_best"] = torch.where(expand(better, z), grad, s["grad_best"])
            s["loss_best"] = torch.where(better, loss, s["loss_best"])
            counter += 1
            if counter == k:
                # Condition 1: the loss rose in at most ρ·k of the last k steps (AutoAttack
                # indexes the history with wrap-around at the first checkpoint; kept as is).
                rises = sum((hist[i - c] > hist[i - c - 1]).to(loss.dtype) for c in range(k))
                reduce = rises <= k * rho
                # Condition 2: step not halved last time and the best loss did not improve.
                reduce |= ~s["reduced_last"] & (s["loss_last"] >= s["loss_best"])
                s["reduced_last"], s["loss_last"] = reduce, s["loss_best"].clone()
                s["step"] = torch.where(reduce, s["step"] / 2, s["step"])
                s["x_adv"] = torch.where(expand(reduce, z), s["x_best"], s["x_adv"])
                s["grad"] = torch.where(expand(reduce, z), s["grad_best"], s["grad"])
                k, counter = max(k - k_decr, k_min), 0
            if early_stop and miss.any():
                keep(~miss)
    # Points never fooled: return their highest-loss iterate.
    with torch.no_grad():
        live = ~fooled[pos]
        out[pos[live]] = s["x_best"][live]
        out_loss[pos[live]] = s["loss_best"][live]
    return out, fooled, out_loss


def check_apgd(*, steps: int, restarts: int, rho: float, loss: str = "ce") -> None:
    check_budget(steps=steps, restarts=restarts)
    if loss not in LOSSES:
        raise AttackError(f"unknown APGD loss {loss!r}: use one of {', '.join(LOSSES)}")
    if not 0 < rho <= 1:
        raise AttackError(f"rho must be in (0, 1], got {rho}")


def _classes(logits: torch.Tensor, y: torch.Tensor, need: int, what: str) -> int:
    c = logits.shape[1]
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= c):
        raise AttackError(f"labels must be in [0, {c - 1}] for a model with {c} outputs")
    if c < need:
        raise AttackError(f"{what} needs a model with at least {need} classes, got {c}")
    return c


def apgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    loss: str,
    restarts: int,
    bounds: Bounds,
    early_stop: bool,
    generator: torch.Generator | None,
    rho: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD with restarts on the points still robust (AutoAttack's ``perturb``); returns
    (x_adv, fooled). Points misclassified when clean are returned unchanged as fooled."""
    loss_fn = _ce if loss == "ce" else dlr_loss
    x, y = x.detach(), y.detach()
    with torch.no_grad():
        logits = model(x)
    _classes(logits, y, 3 if loss == "dlr" else 2, "the DLR loss")
    fooled = logits.argmax(1) != y
    out = x.clone()
    best = torch.full((x.shape[0],), -float("inf"), device=x.device, dtype=logits.dtype)
    for _ in range(restarts):
        todo = (~fooled).nonzero().flatten()
        if todo.numel() == 0:
            break
        adv, hit, loss_r = _run(
            model,
            x[todo],
            y[todo],
            None,
            eps=eps,
            norm=norm,
            steps=steps,
            loss_fn=loss_fn,
            bounds=bounds,
            rho=rho,
            early_stop=early_stop,
            generator=generator,
        )
        better = hit | (loss_r > best[todo])
        out[todo[better]] = adv[better]
        best[todo] = torch.maximum(best[todo], loss_r)
        fooled[todo[hit]] = True
    return out, fooled


def apgd_targeted_attack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    n_target_classes: int,
    restarts: int,
    bounds: Bounds,
    early_stop: bool,
    generator: torch.Generator | None,
    rho: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """APGD-T: for the 2nd, 3rd, … most likely clean classes in turn, APGD on the targeted
    DLR loss over the points still robust; returns (x_adv, fooled)."""
    x, y = x.detach(), y.detach()
    with torch.no_grad():
        logits = model(x)
    c = _classes(logits, y, 4, "APGD-T's targeted DLR loss")
    ranked = logits.argsort(dim=1, descending=True)
    fooled = logits.argmax(1) != y
    out = x.clone()
    for t in range(1, min(n_target_classes, c - 1) + 1):
        for _ in range(restarts):
            todo = (~fooled).nonzero().flatten()
            if todo.numel() == 0:
                return out, fooled
            adv, hit, _ = _run(
                model,
                x[todo],
                y[todo],
                ranked[todo, t],
                eps=eps,
                norm=norm,
                steps=steps,
                loss_fn=dlr_loss,
                bounds=bounds,
                rho=rho,
                early_stop=early_stop,
                generator=generator,
            )
            out[todo] = adv  # fooled rows get their adversarial, the rest the latest best
            fooled[todo[hit]] = True
    return out, fooled


def apgd(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    steps: int = 100,
    loss: str = "ce",
    restarts: int = 1,
    bounds: Bounds = (0.0, 1.0),
    early_stop: bool = False,
    generator: torch.Generator | None = None,
    rho: float = 0.75,
) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020) on the cross-entropy (``loss='ce'``, APGD-CE) or the DLR
    loss (``'dlr'``) under L∞ or L2, exactly as AutoAttack's standard version: step size
    starting at 2ε, momentum 0.75, halved at checkpoints (threshold ``rho``) with a restart
    from the best point. Restarts attack only the points still robust.

    Args: ``x`` (N, ...) within ``bounds``, ``y`` (N,) true labels; ``early_stop`` drops a
    point from the active set as soon as it is misclassified (robust-accuracy evaluation:
    same robust accuracy, far fewer passes on weak models).

    Returns ``x_adv`` (N, ...): a misclassified point within ε where one was found, else the
    highest-loss iterate; points misclassified when clean are returned unchanged.

    Example::

        x_adv = apgd(model, x, y, eps=8 / 255, norm="inf", early_stop=True)
    """
    norm = check_args(x, y, eps, norm, bounds)
    check_apgd(steps=steps, restarts=restarts, rho=rho, loss=loss)
    with eval_mode(model):
        out, _ = apgd_attack(
            model,
            x,
            y,
            eps=float(eps),
            norm=norm,
            steps=steps,
            loss=loss,
            restarts=restarts,
            bounds=bounds,
            early_stop=early_stop,
            generator=generator,
            rho=rho,
        )
    return out


def apgd_targeted(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    bounds: Bounds = (0.0, 1.0),
    early_stop: bool = False,
    generator: torch.Generator | None = None,
    rho: float = 0.75,
) -> torch.Tensor:
    """APGD-T (Croce & Hein 2020): APGD on the targeted DLR loss, one run of ``steps``
    iterations per target class (the 2nd … ``n_target_classes + 1``-th most likely classes
    of the clean input, capped at the number of classes − 1), each only on the points still
    robust. Success is any misclassification. Needs ≥ 4 classes. Returns ``x_adv`` like
    :func:`apgd`."""
    norm = check_args(x, y, eps, norm, bounds)
    check_apgd(steps=steps, restarts=restarts, rho=rho)
    if n_target_classes < 1:
        raise AttackError(f"n_target_classes must be >= 1, got {n_target_classes}")
    with eval_mode(model):
        out, _ = apgd_targeted_attack(
            model,
            x,
            y,
            eps=float(eps),
            norm=norm,
            steps=steps,
            n_target_classes=n_target_classes,
            restarts=restarts,
            bounds=bounds,
            early_stop=early_stop,
            generator=generator,
            rho=rho,
        )
    return out


def standard_ensemble(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    steps: int = 100,
    n_target_classes: int = 9,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
    restarts: int = 1,
    early_stop: bool = False,
) -> torch.Tensor:
    """The standard ensemble (Croce & Hein 2020): APGD-CE, then APGD-T on the points it left
    robust; per-sample worst case (a point fooled by either member is fooled). AutoAttack's
    budget by default: 100 iterations, 9 target classes, one restart each. Returns ``x_adv``:
    the fooling member's example, else APGD-T's highest-loss point."""
    norm = check_args(x, y, eps, norm, bounds)
    check_apgd(steps=steps, restarts=restarts, rho=0.75)
    if n_target_classes < 1:
        raise AttackError(f"n_target_classes must be >= 1, got {n_target_classes}")
    kw = {
        "eps": float(eps),
        "norm": norm,
        "steps": steps,
        "restarts": restarts,
        "bounds": bounds,
        "early_stop": early_stop,
        "generator": generator,
        "rho": 0.75,
    }
    with eval_mode(model):
        out, _ = apgd_attack(model, x, y, loss="ce", **kw)
        with torch.no_grad():
            left = (model(out).argmax(1) == y).nonzero().flatten()
        if left.numel():
            adv, _ = apgd_targeted_attack(
                model, x[left], y[left], n_target_classes=n_target_classes, **kw
            )
            out[left] = adv
    return out
