"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, "Minimally distorted
adversarial examples with a fast adaptive boundary attack", ICML 2020), L∞ and L2, as
AutoAttack's standard version runs it: 9 target classes, 100 iterations, one restart,
α_max = 0.1, η = 1.05, β = 0.9.

FAB looks for the *minimal-norm* adversarial. At each iterate ``x₁`` it linearises the
decision boundary between the true class ``y`` and the target ``t``, ``z_t − z_y = 0``, into
the hyperplane ``{z : ∇f·z = ∇f·x₁ − f(x₁)}`` and projects onto it, within the box, both
the iterate and the clean point ``x₀`` (the minimal-norm steps ``d₁``, ``d₂``; Algorithm 1
of the paper). The next iterate is the biased convex combination
``(1 − α)(x₁ + η d₁) + α(x₀ + η d₂)``, ``α = min(‖d₁‖/(‖d₁‖ + ‖d₂‖), α_max)``, which keeps it
close to ``x₀``; η > 1 overshoots the boundary. An iterate that fools the model (any wrong
class, as in AutoAttack) is recorded if it is the closest so far and pulled back towards
``x₀`` by β. Restarts after the first start from a random point at distance ε/2.

Used as a *bounded* attack (AutoAttack): a point counts as fooled only if the closest
adversarial found lies within ε. With ``early_stop=True`` a point leaves the active set once
that holds (its distance can only shrink afterwards, so the decision is the same).

The projection onto a hyperplane within a box (:func:`project_hyperplane`) is solved exactly:
for either norm the hyperplane's value along the optimal path is a piecewise-linear,
non-decreasing function of one parameter (the L∞ radius, or the L2 multiplier), so sorting
its breakpoints and a cumulative sum find the solution per row. Frozen features of a
:class:`~bastion.data.box.Box` have no room to move and keep their clean values.
"""

from __future__ import annotations

import torch
from torch import nn

from bastion.attacks._apgd import _classes
from bastion.attacks._ball import Bounds, Box, as_box, check_args, check_budget, eval_mode, noise
from bastion.errors import AttackError

#: AutoAttack's FAB parameters (standard version).
ALPHA_MAX, ETA, BETA = 0.1, 1.05, 0.9
_HUGE = 1e30


def project_hyperplane(
    p: torch.Tensor,
    w: torch.Tensor,
    b: torch.Tensor,
    lo: torch.Tensor,
    hi: torch.Tensor,
    norm: str,
    frozen: torch.Tensor | None = None,
) -> torch.Tensor:
    """The minimal-norm step ``d`` (rows of (M, D)) with ``w·(p + d) = b`` and
    ``lo ≤ p + d ≤ hi``; frozen features (a (D,) mask) stay put. Where the box cannot reach
    the hyperplane, the step goes as far towards it as the box allows.

    Writing ``c = b − w·p`` and ``s = sign(c)``, feature i moves by ``m_i ≥ 0`` in the
    direction ``s·sign(w_i)`` with room ``r_i`` up to the box; the optimum is
    ``m_i = min(τ k_i, r_i)`` with ``k_i = 1`` (L∞, τ the radius) or ``k_i = |w_i|`` (L2, the
    KKT multiplier), and ``g(τ) = Σ |w_i| m_i(τ)`` must equal ``|c|``."""
    c = b - (w * p).sum(1)
    ws = torch.where(c[:, None] >= 0, w, -w)
    aw = ws.abs()
    room = torch.where(ws > 0, hi - p, p - lo).clamp_min(0)
    room = torch.where(aw > 0, room, torch.zeros_like(room))
    if frozen is not None:
        room = room.masked_fill(frozen, 0)
    k = torch.ones_like(aw) if norm == "inf" else aw
    breaks = room / k.clamp_min(1e-30)
    order = breaks.argsort(dim=1)
    t_sorted = breaks.gather(1, order)
    cap = (aw * room).gather(1, order)
    slope = (aw * k).gather(1, order)
    cap_before = cap.cumsum(1) - cap  # Σ over features saturated before breakpoint j
    slope_from = slope.flip(1).cumsum(1).flip(1)  # Σ over features still moving at j
    g_at = cap_before + t_sorted * slope_from
    need = c.abs()
    n_sat = (g_at < need[:, None]).sum(1)
    j = n_sat.clamp(max=p.shape[1] - 1)[:, None]
    tau = (need - cap_before.gather(1, j)[:, 0]) / slope_from.gather(1, j)[:, 0].clamp_min(1e-30)
    tau = torch.where(n_sat >= p.shape[1], torch.full_like(tau, _HUGE), tau.clamp_min(0))
    return ws.sign() * torch.minimum(tau[:, None] * k, room)


def _size(d: torch.Tensor, norm: str) -> torch.Tensor:
    return d.abs().amax(1) if norm == "inf" else d.norm(dim=1)


def _diff_grad(
    model: nn.Module, z: torch.Tensor, shape: tuple[int, ...], y: torch.Tensor, t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``f = z_t − z_y`` (negative while the point is not adversarial for ``t``), its input
    gradient, flattened, and the predicted class (one forward + backward)."""
    zin = z.detach().view(-1, *shape).requires_grad_(True)
    with torch.enable_grad():
        logits = model(zin)
        f = logits.gather(1, t[:, None])[:, 0] - logits.gather(1, y[:, None])[:, 0]
        (g,) = torch.autograd.grad(f.sum(), zin)
    return f.detach(), g.flatten(1), logits.detach().argmax(1)


def _flat_box(
    bounds: Bounds, x: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The bounds as (1, D) rows and the frozen mask as (D,), for flattened samples."""
    box = as_box(bounds).to(x)
    shape = x.shape[1:]
    lo = box.lo.expand(shape).reshape(1, -1)
    hi = box.hi.expand(shape).reshape(1, -1)
    frozen = None
    if isinstance(bounds, Box) and bounds.frozen is not None:
        frozen = box.frozen.expand(shape).reshape(-1)  # type: ignore[union-attr]
    return lo, hi, frozen


def _fab_run(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    target: torch.Tensor,
    *,
    eps: float,
    norm: str,
    steps: int,
    bounds: Bounds,
    random_start: bool,
    early_stop: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One FAB run towards ``target``; returns (closest adversarial found, its distance), the
    distance +inf (and the clean point) where none was found."""
    shape = tuple(x.shape[1:])
    lo, hi, frozen = _flat_box(bounds, x)
    x0 = x.detach().flatten(1)
    n = x0.shape[0]
    best = torch.full((n,), float("inf"), device=x.device, dtype=x.dtype)
    adv = x0.clone()
    x1 = x0.clone()
    if random_start:
        if norm == "inf":
            r = 2 * noise(x0.shape, "rand", generator, x.device, x.dtype) - 1
        else:
            r = noise(x0.shape, "randn", generator, x.device, x.dtype)
        r = 0.5 * eps * r / _size(r, norm).clamp_min(1e-12)[:, None]
        if frozen is not None:
            r = r.masked_fill(frozen, 0)
        x1 = torch.minimum(torch.maximum(x0 + r, lo), hi)
    pos = torch.arange(n, device=x.device)
    xa0, ya, ta = x0, y, target
    f = g = pred = None
    for it in range(steps + 1):
        if pos.numel() == 0:
            break
        # The pass that gives the gradient at x1 also tells whether the previous step's x1
        # is adversarial: one model pass per iteration, not a gradient and a check.
        if it < steps:
            f, g, pred = _diff_grad(model, x1, shape, ya, ta)
        else:
            with torch.no_grad():
                pred = model(x1.view(-1, *shape)).argmax(1)
        if it > 0:
            with torch.no_grad():
                hit = pred != ya
                if hit.any():
                    dist = _size(x1 - xa0, norm)
                    closer = hit & (dist < best[pos])
                    adv[pos[closer]] = x1[closer]
                    best[pos[closer]] = dist[closer]
                    x1 = torch.where(hit[:, None], xa0 + (x1 - xa0) * BETA, x1)
                    if it < steps:  # the moved rows need their gradient again
                        idx = hit.nonzero().flatten()
                        f_h, g_h, _ = _diff_grad(model, x1[idx], shape, ya[idx], ta[idx])
                        f, g = f.clone(), g.clone()
                        f[idx], g[idx] = f_h, g_h
                if early_stop:
                    keep = best[pos] > eps
                    if not bool(keep.all()):
                        pos, x1, f, g = pos[keep], x1[keep], f[keep], g[keep]
                        xa0, ya, ta = x0[pos], y[pos], target[pos]
                        if pos.numel() == 0:
                            break
        if it == steps:
            break
        with torch.no_grad():
            m = pos.numel()
            b = (g * x1).sum(1) - f
            d = project_hyperplane(
                torch.cat((x1, xa0)), torch.cat((g, g)), torch.cat((b, b)), lo, hi, norm, frozen
            )
            d1, d2 = d[:m], d[m:]
            a1 = _size(d1, norm).clamp_min(1e-8)
            a2 = _size(d2, norm).clamp_min(1e-8)
            alpha = (a1 / (a1 + a2)).clamp(0, ALPHA_MAX)[:, None]
            x1 = (x1 + ETA * d1) * (1 - alpha) + (xa0 + ETA * d2) * alpha
            x1 = torch.minimum(torch.maximum(x1, lo), hi)
            if frozen is not None:
                x1 = torch.where(frozen, xa0, x1)
    return adv.view_as(x), best


def fab_targeted_attack(
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """FAB-T over a batch, bounded by ε as in AutoAttack's ``perturb``: for the 2nd, 3rd, …
    most likely clean classes in turn, ``restarts`` FAB runs on the points not yet fooled
    within ε. Returns (x_adv, fooled): the adversarial within ε where one was found, else
    the clean point; clean-misclassified points are returned unchanged as fooled."""
    x, y = x.detach(), y.detach()
    with torch.no_grad():
        logits = model(x)
    c = _classes(logits, y, 2, "FAB-T")
    ranked = logits.argsort(dim=1, descending=True)
    fooled = logits.argmax(1) != y
    out = x.clone()
    for rank in range(1, min(n_target_classes, c - 1) + 1):
        for r in range(restarts):
            todo = (~fooled).nonzero().flatten()
            if todo.numel() == 0:
                return out, fooled
            adv, dist = _fab_run(
                model,
                x[todo],
                y[todo],
                ranked[todo, rank],
                eps=eps,
                norm=norm,
                steps=steps,
                bounds=bounds,
                random_start=r > 0,
                early_stop=early_stop,
                generator=generator,
            )
            with torch.no_grad():
                hit = (dist <= eps) & (model(adv).argmax(1) != y[todo])
            out[todo[hit]] = adv[hit]
            fooled[todo[hit]] = True
    return out, fooled


def check_fab(*, steps: int, restarts: int, n_target_classes: int) -> None:
    check_budget(steps=steps, restarts=restarts)
    if int(n_target_classes) != n_target_classes or n_target_classes < 1:
        raise AttackError(f"n_target_classes must be an integer >= 1, got {n_target_classes}")


def fab_targeted(
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
) -> torch.Tensor:
    """FAB-T (Croce & Hein 2020) under L∞ or L2 as a bounded attack, AutoAttack's standard
    budget by default: one run of ``steps`` iterations per target class (the 2nd …
    ``min(n_target_classes, K − 1) + 1``-th most likely clean classes of a K-class model),
    each only on the points still robust; restarts after the first start at random.

    Returns ``x_adv`` (N, ...): the closest adversarial found where it lies within ε
    (``‖x_adv − x‖ ≤ eps``), else the clean point; always within ``bounds``, frozen features
    untouched. Deterministic with ``restarts=1``. Example::

        x_adv = fab_targeted(model, x, y, eps=8 / 255)
    """
    norm = check_args(x, y, eps, norm, bounds)
    check_fab(steps=steps, restarts=restarts, n_target_classes=n_target_classes)
    with eval_mode(model):
        out, _ = fab_targeted_attack(
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
        )
    return out
