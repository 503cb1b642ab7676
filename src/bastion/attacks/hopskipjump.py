"""HopSkipJump (Chen, Jordan & Wainwright, "HopSkipJumpAttack: a query-efficient
decision-based attack", IEEE S&P 2020), L2 and L∞, labels only. Inputs are any batch
(N, ...), images or feature vectors (N, D); ``bounds`` a ``(low, high)`` pair or a
per-feature :class:`~bastion.attacks.evasion.Box` whose frozen features never move.

Start from any adversarial point (uniform noise, other inputs of the batch with another
label when noise fails, or ``x_init``), then repeat: binary-search
along the line to the original input to sit on the decision boundary; estimate the
boundary's normal from the target's yes/no answers on ``B_t = B_0·√t`` random probes at
radius δ_t (Monte Carlo, baseline-corrected); step along it with a geometrically shrinking
step size until still adversarial; binary-search back to the boundary. The distance to the
original input shrinks over iterations while every kept point stays adversarial.

Batched across points: every point keeps its own state and query count, each phase asks the
target once for all active points (chunked), and a point stops at ``max_queries``.
"""

from __future__ import annotations

import math

import torch

from bastion.attacks.evasion import Bounds, Box, check_args, clip, limits, mask_frozen, width
from bastion.attacks.targets import BlackBoxResult, QueryTarget, as_target, is_adversarial
from bastion.errors import AttackError, QueryBudgetExceeded

_CHUNK = 4_000_000  # input elements per probe batch in gradient estimation


class _Oracle:
    """The target plus per-point query accounting and the per-point budget."""

    def __init__(self, target: QueryTarget, y: torch.Tensor, targeted: bool, budget: int) -> None:
        self.target, self.y, self.targeted, self.budget = target, y, targeted, budget
        self.used = torch.zeros(y.shape[0], dtype=torch.long, device=y.device)

    def left(self, idx: torch.Tensor) -> torch.Tensor:
        return self.budget - self.used[idx]

    def ask(self, idx: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
        """Is ``xs[k]`` adversarial for point ``idx[k]``? (``idx`` may repeat.)"""
        answer = self.target(xs)
        self.used.index_add_(0, idx, torch.ones_like(idx))
        return is_adversarial(answer, self.y[idx], self.targeted)


def _dist(a: torch.Tensor, b: torch.Tensor, norm: str) -> torch.Tensor:
    diff = (a - b).flatten(1)
    return diff.abs().amax(1) if norm == "inf" else diff.norm(dim=1)


def _project(x0: torch.Tensor, x1: torch.Tensor, alpha: torch.Tensor, norm: str) -> torch.Tensor:
    """The point at parameter ``alpha`` on the way from x0 to x1: a blend (L2) or x1 clipped
    to the L∞ box of radius ``alpha`` around x0."""
    a = alpha.view(-1, *([1] * (x0.ndim - 1)))
    if norm == "2":
        return (1 - a) * x0 + a * x1
    return torch.minimum(torch.maximum(x1, x0 - a), x0 + a)


def _boundary(
    oracle: _Oracle,
    idx: torch.Tensor,
    x0: torch.Tensor,
    x1: torch.Tensor,
    theta: float,
    norm: str,
    bounds: Bounds,
) -> torch.Tensor:
    """Binary search between x0 (clean) and adversarial x1 down to tolerance θ; returns the
    adversarial end, which stays adversarial even when a point runs out of queries. With a
    :class:`Box` every point is clipped to it, so the blend's rounding can neither leave the
    box nor move a frozen feature off its clean value."""

    def at(a: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        p = _project(a, b, alpha, norm)
        return clip(p, bounds, ref=a) if isinstance(bounds, Box) else p

    if norm == "2":
        high = torch.ones(idx.shape[0], device=x0.device)
        tol = torch.full_like(high, theta)
    else:
        high = _dist(x1, x0, norm)
        tol = (high * theta).clamp(max=theta)
    low = torch.zeros_like(high)
    while True:
        act = (((high - low) > tol) & (oracle.left(idx) > 0)).nonzero().squeeze(1)
        if act.numel() == 0:
            break
        mid = (high[act] + low[act]) / 2
        adv = oracle.ask(idx[act], at(x0[act], x1[act], mid))
        high[act] = torch.where(adv, mid, high[act])
        low[act] = torch.where(adv, low[act], mid)
    return at(x0, x1, high)


def _estimate_direction(
    oracle: _Oracle,
    idx: torch.Tensor,
    xb: torch.Tensor,
    x0: torch.Tensor,
    delta: torch.Tensor,
    evals: torch.Tensor,
    norm: str,
    bounds: Bounds,
    gen: torch.Generator,
) -> torch.Tensor:
    """Monte Carlo estimate of the boundary normal at xb (unit L2), ``evals[k]`` probes for
    point k; refused answers are left out. Probes never move frozen features (kept at the
    clean ``x0``) and are clipped to the box."""
    m, shape = xb.shape[0], xb.shape[1:]
    d = math.prod(shape)
    grad = torch.zeros_like(xb)
    per_chunk = max(1, _CHUNK // max(1, d * int(evals.max())))
    for s in range(0, m, per_chunk):
        sl = slice(s, s + per_chunk)
        k = int(evals[sl].max())
        size = (xb[sl].shape[0], k, *shape)
        if norm == "2":
            rv = torch.randn(size, generator=gen)
        else:
            rv = 2 * torch.rand(size, generator=gen) - 1
        rv = mask_frozen(rv.to(xb.device), bounds)
        rv = rv / rv.flatten(2).norm(dim=2).clamp_min(1e-12).view(*size[:2], *([1] * len(shape)))
        dl = delta[sl].view(-1, 1, *([1] * len(shape)))
        probes = clip(xb[sl, None] + dl * rv, bounds, ref=x0[sl, None])
        rv = (probes - xb[sl, None]) / dl
        valid = torch.arange(k, device=xb.device)[None] < evals[sl, None]
        owner = idx[sl, None].expand(-1, k)
        fval = torch.zeros(valid.shape, device=xb.device)
        fval[valid] = oracle.ask(owner[valid], probes[valid]).float() * 2 - 1
        counted = valid.float()
        n_ok = counted.sum(1).clamp_min(1)
        mean = fval.sum(1) / n_ok
        # all probes on one side: move towards (or away from) their mean; else baseline-correct
        centred = torch.where(mean.abs() == 1, mean, torch.zeros_like(mean))
        weights = torch.where((mean.abs() == 1)[:, None], centred[:, None], fval - mean[:, None])
        weights = weights * counted
        est = (weights.view(*weights.shape, *([1] * len(shape))) * rv).sum(1) / n_ok.view(
            -1, *([1] * len(shape))
        )
        grad[sl] = est
    return grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * len(shape)))


def _initial_adversarial(
    oracle: _Oracle,
    x: torch.Tensor,
    y: torch.Tensor,
    tries: int,
    bounds: Bounds,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Uniform noise in ``bounds`` (per feature for a :class:`Box`) until adversarial, as in the
    paper; a point still without one after half the ``tries`` (noise a model always puts in
    one class, e.g. "bag") then tries the other inputs of the batch that carry a different
    label. Frozen features of every candidate are those of the point's own clean input."""
    n = x.shape[0]
    everyone = torch.arange(n, device=x.device)
    start = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    lo, hi = limits(bounds, x)
    boxed = not isinstance(lo, float)
    for r in range(tries):
        idx = ((~found) & (oracle.left(everyone) > 0)).nonzero().squeeze(1)
        if idx.numel() == 0:
            break
        cand = torch.rand(x[idx].shape, generator=gen).to(x.device)
        cand = lo + (hi - lo) * cand
        if r >= tries // 2 and n > 1:
            other = torch.randint(0, n, (idx.numel(),), generator=gen).to(x.device)
            usable = y[other] != y[idx]
            cand[usable] = x[other[usable]]
        if boxed:
            cand = clip(cand, bounds, ref=x[idx])
        adv = oracle.ask(idx, cand)
        start[idx[adv]] = cand[adv]
        found[idx[adv]] = True
    return start, found


def hopskipjump(
    query: QueryTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str = "2",
    max_queries: int = 1000,
    targeted: bool = False,
    x_init: torch.Tensor | None = None,
    gamma: float = 1.0,
    init_evals: int = 100,
    max_evals: int = 10_000,
    max_iter: int = 100,
    init_tries: int = 100,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> BlackBoxResult:
    """HopSkipJump under L2 or L∞ with at most ``max_queries`` queries per point.

    Minimum-norm: returns the closest adversarial found for every point (``success`` tells
    which points have one; the others are returned unchanged). ``y`` is the true label, or
    the target class when ``targeted`` (which needs ``x_init``: inputs already classified
    as the target). ``gamma`` sets the binary-search tolerance θ = γ/d^{3/2} (L2) or γ/d²
    (L∞). Only label decisions are used, so any target kind works. Example::

        res = hopskipjump(ModuleTarget(model, kind="labels"), x, y, max_queries=1000)
        median_l2 = res.distance(x, "2")[res.success].median()
    """
    norm = check_args(x, y, 0.0, norm, bounds)
    target = as_target(query, kind="labels")
    if max_queries < 1 or init_evals < 1 or max_evals < 1 or max_iter < 0 or gamma <= 0:
        raise AttackError("max_queries, init_evals, max_evals must be >= 1 and gamma > 0")
    if targeted and x_init is None:
        raise AttackError("a targeted HopSkipJump needs x_init: inputs classified as the target")
    if x_init is not None and x_init.shape != x.shape:
        raise AttackError(f"x_init has shape {tuple(x_init.shape)}, x has {tuple(x.shape)}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    x = x.detach()
    n = x.shape[0]
    oracle = _Oracle(target, y, targeted, max_queries)
    d = math.prod(x.shape[1:])
    theta = gamma / (d * math.sqrt(d)) if norm == "2" else gamma / d**2
    everyone = torch.arange(n, device=x.device)
    exhausted = False
    x_adv = x.clone()
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    try:
        if x_init is not None:
            start = x_init.detach().clone()
            if isinstance(bounds, Box):
                start = clip(start, bounds, ref=x)
            found = oracle.ask(everyone, start)
        else:
            start, found = _initial_adversarial(oracle, x, y, init_tries, bounds, gen)
        idx = found.nonzero().squeeze(1)
        x_adv[idx] = start[idx]
        x_adv[idx] = _boundary(oracle, idx, x[idx], start[idx], theta, norm, bounds)
        search_steps = math.ceil(math.log2(max(2.0, 1 / theta))) + 1
        for t in range(1, max_iter + 1):
            idx = (found & (oracle.left(everyone) > search_steps + 2)).nonzero().squeeze(1)
            if idx.numel() == 0:
                break
            xa, x0 = x_adv[idx], x[idx]
            dist = _dist(xa, x0, norm)
            if t == 1:
                delta = torch.full_like(dist, 0.1 * width(bounds))
            else:
                delta = (math.sqrt(d) if norm == "2" else d) * theta * dist
            delta = delta.clamp_min(1e-8)
            want = min(int(init_evals * math.sqrt(t)), max_evals)
            evals = (oracle.left(idx) - search_steps - 2).clamp(max=want)
            grad = _estimate_direction(oracle, idx, xa, x0, delta, evals, norm, bounds, gen)
            update = grad.sign() if norm == "inf" else grad
            step = dist / math.sqrt(t)
            moved = xa.clone()
            pending = torch.ones(idx.shape[0], dtype=torch.bool, device=x.device)
            for _ in range(25):
                act = (pending & (oracle.left(idx) > 0)).nonzero().squeeze(1)
                if act.numel() == 0:
                    break
                trial = xa[act] + step[act].view(-1, *([1] * (x.ndim - 1))) * update[act]
                trial = clip(trial, bounds, ref=x0[act])
                ok = oracle.ask(idx[act], trial)
                moved[act[ok]] = trial[ok]
                pending[act[ok]] = False
                step[act[~ok]] /= 2
            x_adv[idx] = _boundary(oracle, idx, x0, moved, theta, norm, bounds)
    except QueryBudgetExceeded:
        exhausted = True
    return BlackBoxResult(x_adv, found, oracle.used.clone(), exhausted=exhausted)
