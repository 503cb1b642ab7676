"""Square attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient
black-box adversarial attack via random search", ECCV 2020), L∞ and L2, score-based.

Random search over square-shaped updates: each iteration proposes, for every point still
unbroken, a perturbation that changes one random square window (side from the schedule
``p``), queries the target once for it, and keeps it when the margin loss
``log p_y − max_{j≠y} log p_j`` (the logit margin, recovered exactly from probabilities)
drops. A point stops on success (margin < 0) or when its query budget is spent.

Batched and torch end to end: every point has its own window position, so one target call
per iteration serves the whole batch; only the query target is ever called.
"""

from __future__ import annotations

import math
from functools import cache

import torch

from bastion.attacks.evasion import Bounds, check_args
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
    for limit, div in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32),
                       (4000, 64), (6000, 128), (8000, 256), (10_000, 512)):  # fmt: skip
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
        moved = ((x + new).clamp(*bounds) - x_best).abs().masked_fill(~mask, 0).flatten(1).amax(1)
        redo = moved < 1e-7
        if not redo.any():
            break
    return (x + new).clamp(*bounds)


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
    return (x + new).clamp(*bounds)


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
    return (x + delta / _image_norm(delta).clamp_min(1e-12) * eps).clamp(*bounds)


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
    labels (or the target classes when ``targeted``). ``p_init`` is the initial fraction
    of pixels changed per step (default 0.3 for L∞, 0.1 for L2). Returns a
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
    if x.ndim != 4:
        raise AttackError(
            f"the Square attack needs images (N, C, H, W), got shape {tuple(x.shape)}"
        )
    if max_queries < 1:
        raise AttackError(f"max_queries must be >= 1, got {max_queries}")
    p_init = p_init if p_init is not None else (0.3 if norm == "inf" else 0.1)
    if not 0 < p_init <= 1:
        raise AttackError(f"p_init must lie in (0, 1], got {p_init}")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    n, c, h, w = x.shape
    x = x.detach()
    queries = torch.zeros(n, dtype=torch.long, device=x.device)
    if n == 0 or eps == 0:
        return BlackBoxResult(x.clone(), torch.zeros(n, dtype=torch.bool), queries)
    if norm == "inf":
        x_best = (x + eps * _random_signs((n, c, 1, w), gen, x.device)).clamp(*bounds)
    else:
        x_best = _init_l2(x, eps, bounds, gen)
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
        xa, xb = x[active], x_best[active]
        if norm == "inf":
            s = min(max(int(round(math.sqrt(p * h * w))), 1), h - 1)
            x_new = _propose_linf(xa, xb, eps, s, bounds, gen)
        else:
            s = max(int(round(math.sqrt(p * h * w))), 3)
            s = min(s + (s % 2 == 0), h - 1)
            x_new = _propose_l2(xa, xb, eps, s, bounds, gen)
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
