"""Square attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020), L∞ and L2, score-based.

Random search over square-shaped updates: each iteration proposes, for every point still
unbroken, a perturbation that changes one random square window (side from the schedule
``p``), queries the target once for it, and keeps it when the margin loss
``log p_y − max_{j≠y} log p_j`` (the logit margin, recovered exactly from probabilities)
drops. A point stops on success (margin < 0) or when its query budget is spent.

Inputs that are not images (N, C, H, W) — feature vectors (N, D), or anything (N, ...) —
get the same random search over *feature subsets* instead of windows: each iteration
changes ⌈p·D⌉ random features (frozen features of a :class:`~bastion.attacks.evasion.Box`
are never chosen), with ``p`` from the same schedule. L∞ sets them to ``x ± ε`` (random
signs); L2 moves the perturbation mass of two random subsets onto the first with a fresh
random ± direction, the feature-wise analogue of the paper's Algorithm 3, keeping
``‖δ‖₂ ≤ ε``. Every proposal is clipped to the box, frozen features kept at ``x``.

Batched and torch end to end: every point has its own window position, so one target call
per iteration serves the whole batch; only the query target is ever called.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import cache

import torch

from bastion.attacks.evasion import Bounds, Box, check_args, clip
from bastion.attacks.targets import BlackBoxResult, QueryTarget, as_target
from bastion.errors import AttackError, QueryBudgetExceeded


def margin_loss(probs: torch.Tensor, y: torch.Tensor, targeted: bool = False) -> torch.Tensor:
    """Per-row margin on log-probabilities (= logit margin); refused (NaN) rows give +inf.
    Negative means the attack succeeded (``y`` is the true class, or the target class)."""
    logp = probs.clamp_min(1e-30).log()
    own = logp.gather(1, y[:, None]).squeeze(1)
    other = logp.scatter(1, y[:, None], float("-inf")).amax(1)
    m = other - own if targeted else own - other
    return torch.where(torch.isnan(m), torch.full_like(m, float("inf")), m)


def p_selection(p_init: float, it: int, n_iters: int) -> float:
    """The paper's piecewise-constant schedule of the fraction of pixels changed, halved at
    fixed fractions of the budget (rescaled to 10 000 iterations)."""
    i = int(it / max(1, n_iters) * 10_000)
    for limit, div in (
        (10, 1),
        (50, 2),
        (200, 4),
        (500, 8),
        (1000, 16),
        (2000, 32),
        (4000, 64),
        (6000, 128),
        (8000, 256),
        (10_000, 512),
    ):
        if i <= limit:
            return p_init / div
    return p_init


def _rect_bump(rows: int, cols: int) -> torch.Tensor:
    """Concentric rectangles with weights 1/(k+1)², unit L2 norm (the paper's pseudo-Gaussian)."""
    delta = torch.zeros(rows, cols)
    rc, cc = rows // 2, cols // 2
    for k in range(max(rc, cc) + 1):
        r0, c0 = rc - k, cc - k
        delta[max(r0, 0) : min(r0 + 2 * k + 1, rows), max(c0, 0) : min(c0 + 2 * k + 1, cols)] += (
            1.0 / (k + 1) ** 2
        )
    return delta / delta.norm().clamp_min(1e-12)


@cache
def _bump(s: int) -> torch.Tensor:
    """An s×s window: a positive bump on the top half, a negative one on the bottom half."""
    delta = torch.zeros(s, s)
    half = s // 2
    if half:
        delta[:half] = _rect_bump(half, s)
    delta[half:] = -_rect_bump(s - half, s)
    return delta / delta.norm().clamp_min(1e-12)


def _window_masks(
    m: int, h: int, w: int, s: int, gen: torch.Generator, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random s×s window per point: mask (m, 1, h, w) and its top-left corners."""
    top = torch.randint(0, h - s + 1, (m,), generator=gen).to(device)
    left = torch.randint(0, w - s + 1, (m,), generator=gen).to(device)
    rows = torch.arange(h, device=device)[None] - top[:, None]
    cols = torch.arange(w, device=device)[None] - left[:, None]
    inside = ((rows >= 0) & (rows < s))[:, :, None] & ((cols >= 0) & (cols < s))[:, None, :]
    return inside[:, None], rows.clamp(0, s - 1), cols.clamp(0, s - 1)


def _random_signs(
    shape: tuple[int, ...], gen: torch.Generator, device: torch.device
) -> torch.Tensor:
    return (2 * torch.randint(0, 2, shape, generator=gen) - 1).float().to(device)


def _propose_linf(
    x: torch.Tensor, x_best: torch.Tensor, eps: float, s: int, bounds: Bounds, gen: torch.Generator
) -> torch.Tensor:
    """Set one random s×s window of the perturbation to ±ε (one sign per channel),
    redrawing (a few times) proposals that would not change the current image."""
    m, c, h, w = x.shape
    mask, _, _ = _window_masks(m, h, w, s, gen, x.device)
    delta = x_best - x
    new = delta
    redo = torch.ones(m, dtype=torch.bool, device=x.device)
    for _ in range(10):
        signs = eps * _random_signs((m, c, 1, 1), gen, x.device)
        new = torch.where(mask & redo.view(-1, 1, 1, 1), signs, new)
        moved = (clip(x + new, bounds, ref=x) - x_best).abs().masked_fill(~mask, 0)
        redo = moved.flatten(1).amax(1) < 1e-7
        if not redo.any():
            break
    return clip(x + new, bounds, ref=x)


def _place(patterns: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Put per-point s×s patterns (m, s, s) at per-point offsets → (m, 1, h, w) (unmasked)."""
    idx = torch.arange(patterns.shape[0], device=patterns.device)[:, None, None]
    return patterns[idx, rows[:, :, None], cols[:, None, :]][:, None]


def _channel_norm(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).sum((2, 3), keepdim=True).sqrt()


def _image_norm(t: torch.Tensor) -> torch.Tensor:
    return t.pow(2).sum((1, 2, 3), keepdim=True).sqrt()


def _propose_l2(
    x: torch.Tensor, x_best: torch.Tensor, eps: float, s: int, bounds: Bounds, gen: torch.Generator
) -> torch.Tensor:
    """Move L2 mass from a random window 2 into a random window 1 that gets a fresh ±bump
    (the paper's Algorithm 3), then rescale the whole perturbation to norm ε."""
    m, c, h, w = x.shape
    delta = x_best - x
    mask1, rows, cols = _window_masks(m, h, w, s, gen, x.device)
    mask2, _, _ = _window_masks(m, h, w, s, gen, x.device)
    mask1f, union = mask1.float(), (mask1 | mask2).float()
    norm_win1 = _channel_norm(delta * mask1f)
    norm_union = _channel_norm(delta * union)
    room = (eps**2 - _image_norm(delta).pow(2)).clamp_min(0) / c
    bump = _bump(s).to(x.device).expand(m, s, s)
    flip = torch.rand(m, generator=gen).to(x.device) < 0.5
    bump = torch.where(flip[:, None, None], bump.transpose(1, 2), bump)
    fresh = _place(bump, rows, cols) * _random_signs((m, c, 1, 1), gen, x.device)
    win = (fresh + delta / (norm_win1 + 1e-10)) * mask1f
    win = win / _channel_norm(win).clamp_min(1e-12) * (room + norm_union.pow(2)).sqrt()
    new = delta * (1 - union) + win
    new = new / _image_norm(new).clamp_min(1e-12) * eps
    return clip(x + new, bounds, ref=x)


def _init_l2(x: torch.Tensor, eps: float, bounds: Bounds, gen: torch.Generator) -> torch.Tensor:
    """A grid of ±bumps of side h//5 (random sign per point, channel and tile), norm ε."""
    n, c, h, w = x.shape
    s = max(h // 5, 1)
    start = max((h - 5 * s) // 2, 0)
    delta = torch.zeros_like(x)
    for r in range(start, h, s):
        for q in range(start, w, s):
            bump = _bump(s).to(x.device)
            if torch.rand(1, generator=gen).item() < 0.5:
                bump = bump.T
            tile = bump[: h - r, : w - q] * _random_signs((n, c, 1, 1), gen, x.device)
            delta[:, :, r : r + s, q : q + s] += tile
    return clip(x + delta / _image_norm(delta).clamp_min(1e-12) * eps, bounds, ref=x)


# ------------------------------------------------------------------- feature vectors
Propose = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def _free(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """The flat features (D,) an attacker may change: all but a :class:`Box`'s frozen ones."""
    d = math.prod(x.shape[1:])
    if isinstance(bounds, Box) and bounds.frozen is not None:
        return ~bounds.frozen.to(x.device).expand(x.shape[1:]).reshape(d)
    return torch.ones(d, dtype=torch.bool, device=x.device)


def _subsets(m: int, free: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """A uniformly random subset of ``k`` free features per row, as a bool mask (m, D)."""
    scores = torch.rand((m, free.numel()), generator=gen).to(free.device)
    idx = scores.masked_fill(~free, -1.0).topk(k, dim=1).indices
    mask = torch.zeros(m, free.numel(), dtype=torch.bool, device=free.device)
    return mask.scatter_(1, idx, True)


def _n_features(p: float, n_free: int) -> int:
    """⌈p·D⌉ features per step, at least one and at most the free ones."""
    return min(max(math.ceil(p * n_free), 1), n_free)


def _propose_linf_vec(
    x: torch.Tensor,
    x_best: torch.Tensor,
    eps: float,
    k: int,
    free: torch.Tensor,
    bounds: Bounds,
    gen: torch.Generator,
) -> torch.Tensor:
    """Set ``k`` random free features of the perturbation to ±ε (random signs). A row whose
    draw would not move it (every chosen feature already at that sign, or clipped back by
    the box) gets the opposite signs instead: one more pass over those rows only, rather
    than redrawing the whole batch until every row moves."""
    sel = _subsets(x.shape[0], free, k, gen)
    flat, delta = x.flatten(1), (x_best - x).flatten(1)
    signs = eps * _random_signs(tuple(delta.shape), gen, x.device).to(delta.dtype)
    new = torch.where(sel, signs, delta)
    cand = clip((flat + new).view_as(x), bounds, ref=x)
    stuck = ((cand - x_best).flatten(1).abs().masked_fill(~sel, 0).amax(1) < 1e-7).nonzero()
    if stuck.numel():
        idx = stuck.flatten()
        flipped = torch.where(sel[idx], -new[idx], new[idx])
        cand[idx] = clip((flat[idx] + flipped).view_as(x[idx]), bounds, ref=x[idx])
    return cand


def _propose_l2_vec(
    x: torch.Tensor,
    x_best: torch.Tensor,
    eps: float,
    k: int,
    free: torch.Tensor,
    bounds: Bounds,
    gen: torch.Generator,
) -> torch.Tensor:
    """Algorithm 3 of the paper on feature subsets: the L2 mass of two random subsets S1, S2
    (plus the room left below ε) moves onto S1 with a fresh random ± direction; the total is
    rescaled to norm ε, then clipped (which only shrinks it)."""
    m = x.shape[0]
    delta = (x_best - x).flatten(1)
    sel1 = _subsets(m, free, k, gen)
    union = (sel1 | _subsets(m, free, k, gen)).to(delta.dtype)
    sel1f = sel1.to(delta.dtype)
    norm1 = (delta * sel1f).norm(dim=1, keepdim=True)
    norm_union = (delta * union).norm(dim=1, keepdim=True)
    room = (eps**2 - delta.pow(2).sum(1, keepdim=True)).clamp_min(0)
    fresh = _random_signs(tuple(delta.shape), gen, x.device).to(delta.dtype) / math.sqrt(k)
    win = (fresh + delta / (norm1 + 1e-10)) * sel1f
    win = win / win.norm(dim=1, keepdim=True).clamp_min(1e-12) * (room + norm_union.pow(2)).sqrt()
    new = delta * (1 - union) + win
    new = new / new.norm(dim=1, keepdim=True).clamp_min(1e-12) * eps
    return clip((x.flatten(1) + new).view_as(x), bounds, ref=x)


def _init_vec(
    x: torch.Tensor, eps: float, norm: str, free: torch.Tensor, bounds: Bounds, gen: torch.Generator
) -> torch.Tensor:
    """±ε on every free feature (L∞), or random ± signs on them scaled to norm ε (L2)."""
    signs = _random_signs((x.shape[0], free.numel()), gen, x.device).to(x.dtype)
    if norm == "2":
        signs = signs * free / math.sqrt(int(free.sum()))
    return clip((x.flatten(1) + eps * signs).view_as(x), bounds, ref=x)


def square_attack(
    query: QueryTarget,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    max_queries: int = 1000,
    p_init: float | None = None,
    targeted: bool = False,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> BlackBoxResult:
    """Square attack under L∞ or L2 with at most ``max_queries`` queries per point.

    ``query`` must answer scores (a target of kind ``"scores"``); ``y`` holds the true
    labels (or the target classes when ``targeted``). ``x`` is a batch of images
    (N, C, H, W) (square windows) or of anything else (N, ...), e.g. feature vectors (N, D)
    (random feature subsets, module docstring); ``bounds`` a ``(low, high)`` pair or a
    per-feature :class:`Box`. ``p_init`` is the initial fraction of pixels (features)
    changed per step (default 0.3 for L∞, 0.1 for L2). Returns a
    :class:`BlackBoxResult` whose ``x_adv`` satisfies ``‖x_adv − x‖ ≤ eps`` and lies within
    ``bounds``. Example::

        res = square_attack(ModuleTarget(model), x, y, eps=0.1, max_queries=1000)
        robust_accuracy = 1 - res.success.float().mean()
    """
    norm = check_args(x, y, eps, norm, bounds)
    target = as_target(query)
    if getattr(target, "kind", "scores") != "scores":
        raise AttackError(
            "the Square attack needs scores (probabilities): use hopskipjump on a labels-only target"
        )
    if max_queries < 1:
        raise AttackError(f"max_queries must be >= 1, got {max_queries}")
    p_init = p_init if p_init is not None else (0.3 if norm == "inf" else 0.1)
    if not 0 < p_init <= 1:
        raise AttackError(f"p_init must lie in (0, 1], got {p_init}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n = x.shape[0]
    x = x.detach()
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    free = _free(x, bounds)
    n_free = int(free.sum())
    if n == 0 or eps == 0 or n_free == 0:
        return BlackBoxResult(x.clone(), torch.zeros(n, dtype=torch.bool), queries)
    eps = float(eps)
    propose: Propose
    if x.ndim == 4 and min(x.shape[2:]) >= 2:
        _, c, h, w = x.shape
        if norm == "inf":
            x_best = clip(x + eps * _random_signs((n, c, 1, w), gen, x.device), bounds, ref=x)
        else:
            x_best = _init_l2(x, eps, bounds, gen)

        def propose(xa: torch.Tensor, xb: torch.Tensor, p: float) -> torch.Tensor:
            if norm == "inf":
                s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1)
                return _propose_linf(xa, xb, eps, s, bounds, gen)
            s = max(int(round(math.sqrt(p * h * w))), 3)
            s = min(s + (s % 2 == 0), h - 1)
            return _propose_l2(xa, xb, eps, s, bounds, gen)

    else:
        x_best = _init_vec(x, eps, norm, free, bounds, gen)
        step = _propose_linf_vec if norm == "inf" else _propose_l2_vec

        def propose(xa: torch.Tensor, xb: torch.Tensor, p: float) -> torch.Tensor:
            return step(xa, xb, eps, _n_features(p, n_free), free, bounds, gen)

    try:
        margin = margin_loss(target(x_best), y, targeted)
    except QueryBudgetExceeded:
        return BlackBoxResult(x.clone(), torch.zeros(n, dtype=torch.bool), queries, exhausted=True)
    queries += 1
    exhausted = False
    for it in range(1, max_queries):
        active = (margin >= 0).nonzero().squeeze(1)
        if active.numel() == 0:
            break
        p = p_selection(p_init, it - 1, max_queries - 1)
        x_new = propose(x[active], x_best[active], p)
        try:
            m_new = margin_loss(target(x_new), y[active], targeted)
        except QueryBudgetExceeded:
            exhausted = True
            break
        queries[active] += 1
        better = m_new < margin[active]
        x_best[active[better]] = x_new[better]
        margin[active[better]] = m_new[better]
    return BlackBoxResult(x_best, margin < 0, queries, exhausted=exhausted)
