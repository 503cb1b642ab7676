"""AutoAttack, standard version (Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020): APGD-CE (100 iterations,
1 restart) → APGD-T (100 iterations, 9 target classes) → FAB-T (9 target classes, 100
iterations) → Square (5 000 queries, p_init 0.8), each run only on the points the previous
members left robust (the active set), with the per-sample worst case: a point is fooled if
any member fools it within ε, and keeps the first fooling member's example.

APGD-T's targeted DLR loss needs four classes: for a model with fewer it is skipped, and the
run records that (AutoAttack itself fails there). The two-attack run APGD-CE → APGD-T is
:func:`bastion.attacks.evasion.standard_ensemble` (registry name ``ensemble``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch
from torch import nn

from bastion.attacks._apgd import apgd_attack, apgd_targeted_attack, check_apgd
from bastion.attacks._ball import Bounds, check_args, eval_mode
from bastion.attacks.fab import check_fab, fab_targeted_attack
from bastion.attacks.square import square_attack
from bastion.attacks.targets import ModuleTarget
from bastion.errors import AttackError

log = logging.getLogger(__name__)

MEMBERS = ("apgd-ce", "apgd-t", "fab-t", "square")


@dataclass(frozen=True)
class MemberRun:
    """One member of the run: its name, budget in words, the points it was given and those
    it fooled, its wall time; ``skipped`` says why it did not run (else None)."""

    name: str
    budget: str
    attacked: int
    fooled: int
    seconds: float
    skipped: str | None = None


@dataclass(frozen=True)
class AutoAttackResult:
    """What :func:`autoattack_run` returns: ``x_adv`` (N, ...), per-point ``robust`` (bool,
    False for clean-misclassified points too) and the members in the order they ran."""

    x_adv: torch.Tensor
    robust: torch.Tensor
    members: tuple[MemberRun, ...]


def _budgets(steps: int, n_target_classes: int, square_queries: int, p_init: float) -> dict:
    return {
        "apgd-ce": f"{steps} iterations, 1 restart",
        "apgd-t": f"{steps} iterations, {n_target_classes} target classes",
        "fab-t": f"{steps} iterations, {n_target_classes} target classes",
        "square": f"{square_queries} queries, p_init {p_init}",
    }


def _cpu_generator(generator: torch.Generator | None) -> torch.Generator:
    """Square draws its windows on the CPU: the caller's generator if it is a CPU one, else a
    CPU generator seeded from it (or with 0)."""
    if generator is None:
        return torch.Generator().manual_seed(0)
    if generator.device.type == "cpu":
        return generator
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


def autoattack_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    square_queries: int = 5000,
    square_p_init: float = 0.8,
    early_stop: bool = True,
    generator: torch.Generator | None = None,
) -> AutoAttackResult:
    """AutoAttack's standard version over a batch with AutoAttack's budgets by default
    (module docstring); ``steps`` is the APGD and FAB iteration budget, ``n_target_classes``
    that of APGD-T and FAB-T (capped at K − 1 classes). Each member's points are checked with
    one more forward pass. Example::

        res = autoattack_run(model, x, y, eps=8 / 255)
        robust_accuracy = float(res.robust.float().mean())
    """
    norm = check_args(x, y, eps, norm, bounds)
    check_apgd(steps=steps, restarts=restarts, rho=0.75)
    check_fab(steps=steps, restarts=restarts, n_target_classes=n_target_classes)
    if int(square_queries) != square_queries or square_queries < 1:
        raise AttackError(f"square_queries must be an integer >= 1, got {square_queries}")
    if not 0 < square_p_init <= 1:
        raise AttackError(f"square_p_init must lie in (0, 1], got {square_p_init}")
    x, y = x.detach(), y.detach()
    eps = float(eps)
    budget = _budgets(steps, n_target_classes, square_queries, square_p_init)
    kw = {"eps": eps, "norm": norm, "steps": steps, "restarts": restarts, "bounds": bounds}
    kw |= {"early_stop": early_stop, "generator": generator}
    members: list[MemberRun] = []
    with eval_mode(model):
        with torch.no_grad():
            logits = model(x)
        classes = logits.shape[1]
        robust = logits.argmax(1) == y
        out = x.clone()
        for name in MEMBERS:
            todo = robust.nonzero().flatten()
            if name == "apgd-t" and classes < 4:
                why = f"its targeted DLR loss needs >= 4 classes, the model has {classes}"
                members.append(MemberRun(name, budget[name], 0, 0, 0.0, skipped=why))
                continue
            if todo.numel() == 0:
                members.append(MemberRun(name, budget[name], 0, 0, 0.0, skipped="no point left"))
                continue
            start = time.perf_counter()
            xs, ys = x[todo], y[todo]
            if name == "apgd-ce":
                adv, _ = apgd_attack(model, xs, ys, loss="ce", rho=0.75, **kw)
            elif name == "apgd-t":
                adv, _ = apgd_targeted_attack(
                    model, xs, ys, n_target_classes=n_target_classes, rho=0.75, **kw
                )
            elif name == "fab-t":
                adv, _ = fab_targeted_attack(model, xs, ys, n_target_classes=n_target_classes, **kw)
            else:
                gen = _cpu_generator(generator)
                adv = square_attack(
                    ModuleTarget(model, assume_eval=True),
                    xs,
                    ys,
                    eps=eps,
                    norm=norm,
                    max_queries=square_queries,
                    p_init=square_p_init,
                    bounds=bounds,
                    generator=gen,
                ).x_adv.to(x)
            with torch.no_grad():
                hit = model(adv).argmax(1) != ys
            out[todo[hit]] = adv[hit]
            robust[todo[hit]] = False
            seconds = time.perf_counter() - start
            members.append(MemberRun(name, budget[name], todo.numel(), int(hit.sum()), seconds))
            log.debug("autoattack %s: fooled %d/%d", name, int(hit.sum()), todo.numel())
    return AutoAttackResult(out, robust, tuple(members))


def autoattack(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    bounds: Bounds = (0.0, 1.0),
    steps: int = 100,
    n_target_classes: int = 9,
    restarts: int = 1,
    square_queries: int = 5000,
    square_p_init: float = 0.8,
    early_stop: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """:func:`autoattack_run`'s ``x_adv`` alone: the first fooling member's example within
    ε for each fooled point, the clean point otherwise."""
    return autoattack_run(
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        bounds=bounds,
        steps=steps,
        n_target_classes=n_target_classes,
        restarts=restarts,
        square_queries=square_queries,
        square_p_init=square_p_init,
        early_stop=early_stop,
        generator=generator,
    ).x_adv
