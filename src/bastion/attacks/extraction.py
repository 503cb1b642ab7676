"""Model extraction through a query target: train a surrogate on the victim's answers.

Knockoff Nets (Orekondy, Schiele & Fritz, CVPR 2019) and Copycat CNN (Correia-Silva et al.,
IJCNN 2018): query the victim on a *transfer set* and train a copy on its answers
(probabilities when the target gives scores, labels otherwise). Query sources:

- ``"pool"``: held-out in-distribution data the attacker owns, in random order; a budget
  larger than the pool is filled with augmented copies (±1 pixel shift for images, Gaussian
  noise σ = 0.05 of the value range, per feature for a per-feature box), each a new query.
- ``"transformed"``: another distribution made from the pool: every image rotated by a
  random multiple of 90°, transposed and intensity-inverted with probability ½ each, and
  half of them blended with another pool image (weight uniform in [0.3, 0.7]). For digits or
  Fashion-MNIST these no longer look like the task's classes. Feature vectors (N, D) (any
  input that is not (N, C, H, W)) get the feature-wise analogue: each feature taken from a
  random other pool row with probability ½ (the product of the marginals, breaking the
  correlations), reflected within its bounds (``lo + hi − x``) for half the rows, and half
  of the rows blended with another pool row.
- ``"noise"``: uniform noise in the value range, per feature within a per-feature box (the
  weakest attacker).
- ``"jacobian"``: Jacobian-based dataset augmentation (Papernot et al., "Practical Black-Box
  Attacks against Machine Learning", AsiaCCS 2017): a small seed from the pool (at most 150
  images, as in the paper), then rounds that double the set with ``x + λ·sign(∇ₓ F[O(x)](x))``
  on the current surrogate F (λ = 0.1 of the range, of each feature's range for a
  per-feature box; its sign flipped every τ = 3 rounds), retraining after each round, until
  the budget is spent.

``bounds`` is a ``(low, high)`` pair or a per-feature :class:`~bastion.attacks.evasion.Box`;
every query lies within it, and a box's frozen features keep the value of the pool row a
query was made from (of a random pool row, for noise).

Fidelity is agreement between surrogate and victim labels on held-out data; the surrogate
then serves transfer attacks (PGD on the surrogate, evaluated on the victim).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from bastion.attacks._ball import expand
from bastion.attacks.evasion import Bounds, Box, clip, eval_mode, limits, pgd
from bastion.attacks.targets import QueryTarget, as_labels, as_target, refused
from bastion.errors import AttackError, NotFittedError
from bastion.models.predict import predict_labels

log = logging.getLogger(__name__)
Source = Literal["pool", "transformed", "noise", "jacobian"]
SOURCES = ("pool", "transformed", "noise", "jacobian")


def _shift(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift every image by a random −1, 0 or +1 pixel per axis (edge-padded)."""
    n, _, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    dy = torch.randint(0, 3, (n,), generator=gen)
    dx = torch.randint(0, 3, (n,), generator=gen)
    rows = (torch.arange(h)[None] + dy[:, None]).to(x.device)
    cols = (torch.arange(w)[None] + dx[:, None]).to(x.device)
    idx = torch.arange(n, device=x.device)[:, None, None, None]
    ch = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    return padded[idx, ch, rows[:, None, :, None], cols[:, None, None, :]]


def _is_image(x: torch.Tensor) -> bool:
    return x.ndim == 4


def augment(x: torch.Tensor, *, bounds: Bounds, generator: torch.Generator) -> torch.Tensor:
    """Mild augmentation: ±1 pixel shifts (images only) and Gaussian noise of σ = 0.05 of the
    range (of each feature's range for a per-feature box); frozen features stay as in ``x``."""
    lo, hi = limits(bounds, x)
    noise = torch.randn(x.shape, generator=generator).to(x.device) * 0.05 * (hi - lo)
    moved = _shift(x, generator) if _is_image(x) else x
    return clip(moved + noise, bounds, ref=x)


def pool_queries(
    pool: torch.Tensor, n: int, *, bounds: Bounds, generator: torch.Generator
) -> torch.Tensor:
    """``n`` queries from the attacker's pool: a random order of it, then augmented copies."""
    order = torch.randperm(pool.shape[0], generator=generator).to(pool.device)
    first = pool[order[:n]]
    left = n - first.shape[0]
    if left <= 0:
        return first
    pick = torch.randint(0, pool.shape[0], (left,), generator=generator).to(pool.device)
    return torch.cat([first, augment(pool[pick], bounds=bounds, generator=generator)])


def transformed_queries(
    pool: torch.Tensor, n: int, *, bounds: Bounds, generator: torch.Generator
) -> torch.Tensor:
    """``n`` queries from another distribution made from the pool (see the module docstring)."""
    if not _is_image(pool):
        return _transformed_vectors(pool, n, bounds=bounds, generator=generator)
    lo, hi = limits(bounds, pool)
    x = pool[torch.randint(0, pool.shape[0], (n,), generator=generator).to(pool.device)]
    base = x.clone() if isinstance(bounds, Box) and bounds.frozen is not None else x
    square = x.shape[-1] == x.shape[-2]
    if square:
        k = torch.randint(0, 4, (n,), generator=generator)
        for turns in range(1, 4):
            sel = (k == turns).to(x.device)
            x[sel] = torch.rot90(x[sel], turns, dims=(-2, -1))
        sel = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x[sel] = x[sel].transpose(-2, -1)
    sel = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    x[sel] = lo + hi - x[sel]
    other = pool[torch.randint(0, pool.shape[0], (n,), generator=generator).to(pool.device)]
    lam = 0.3 + 0.4 * torch.rand(n, generator=generator).to(x.device)
    mix = (torch.rand(n, generator=generator) < 0.5).to(x.device)
    lam = expand(torch.where(mix, lam, torch.ones_like(lam)), x)
    return clip(lam * x + (1 - lam) * other, bounds, ref=base)


def _transformed_vectors(
    pool: torch.Tensor, n: int, *, bounds: Bounds, generator: torch.Generator
) -> torch.Tensor:
    """The feature-wise "transformed" source for vectors (N, ...) (module docstring)."""
    lo, hi = limits(bounds, pool)
    m, dev = pool.shape[0], pool.device
    base = pool[torch.randint(0, m, (n,), generator=generator).to(dev)]
    flat = pool.flatten(1)
    # each feature from a random pool row with probability 1/2 (product of the marginals)
    rows = torch.randint(0, m, (n, flat.shape[1]), generator=generator).to(dev)
    shuffled = flat.gather(0, rows).view_as(base)
    swap = (torch.rand(base.shape, generator=generator) < 0.5).to(dev)
    x = torch.where(swap, shuffled, base)
    flip = expand((torch.rand(n, generator=generator) < 0.5).to(dev), x)
    x = torch.where(flip, lo + hi - x, x)
    other = pool[torch.randint(0, m, (n,), generator=generator).to(dev)]
    lam = 0.3 + 0.4 * torch.rand(n, generator=generator).to(dev)
    mix = (torch.rand(n, generator=generator) < 0.5).to(dev)
    lam = expand(torch.where(mix, lam, torch.ones_like(lam)), x)
    return clip(lam * x + (1 - lam) * other, bounds, ref=base)


def noise_queries(
    shape: tuple[int, ...], n: int, *, bounds: Bounds, generator: torch.Generator
) -> torch.Tensor:
    """``n`` uniform-noise queries in ``bounds`` (per feature for a per-feature box; frozen
    features are not kept: :func:`draw_queries` copies them from random pool rows)."""
    u = torch.rand((n, *shape), generator=generator)
    lo, hi = limits(bounds, u)
    return lo + (hi - lo) * u


def draw_queries(
    source: str, pool: torch.Tensor, n: int, *, bounds: Bounds, generator: torch.Generator
) -> torch.Tensor:
    """``n`` queries from a non-adaptive source (``pool``, ``transformed`` or ``noise``)."""
    if source == "pool":
        return pool_queries(pool, n, bounds=bounds, generator=generator)
    if source == "transformed":
        return transformed_queries(pool, n, bounds=bounds, generator=generator)
    if source == "noise":
        x = noise_queries(tuple(pool.shape[1:]), n, bounds=bounds, generator=generator)
        x = x.to(pool.device)
        if isinstance(bounds, Box) and bounds.frozen is not None:
            ref = pool[torch.randint(0, pool.shape[0], (n,), generator=generator).to(pool.device)]
            x = clip(x, bounds, ref=ref)
        return x
    raise AttackError(f"unknown query source {source!r}: choose from {', '.join(SOURCES[:3])}")


def _steps(n: int, *, epochs: int, batch_size: int, min_steps: int, max_steps: int) -> int:
    return min(max_steps, max(min_steps, epochs * math.ceil(n / batch_size)))


def train_surrogate(
    model: nn.Module,
    x: torch.Tensor,
    answers: torch.Tensor,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 3e-3,
    min_steps: int = 200,
    max_steps: int = 1500,
    temperature: float = 1.0,
    schedule: str = "cosine",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Fit ``model`` (in place, Adam) to the victim's answers: cross-entropy on labels (N,);
    on probabilities (N, K), distillation at ``temperature`` T (Hinton et al. 2015): the
    victim's ``softmax(z/T)`` is recovered exactly from its probabilities (``p^(1/T)``
    renormalised) and matched by the surrogate's, loss scaled by T². T > 1 brings out what
    the small probabilities say about the victim. Refused answers are left out. ``epochs``
    passes, kept within [min_steps, max_steps] optimizer steps so that tiny budgets still
    converge and large ones stay affordable; ``schedule`` is ``"cosine"`` or ``"constant"``.
    Warm starts are fine: pass the surrogate of a smaller budget to continue from it."""
    if temperature <= 0:
        raise AttackError(f"temperature must be > 0, got {temperature}")
    if schedule not in ("cosine", "constant"):
        raise AttackError(f"unknown schedule {schedule!r}: use 'cosine' or 'constant'")
    keep = ~refused(answers)
    x, answers = x[keep], answers[keep]
    if x.shape[0] == 0:
        raise AttackError("every query was refused: nothing to train a surrogate on")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    soft = answers.ndim == 2
    if soft:
        answers = F.softmax(answers.clamp_min(1e-30).log() / temperature, dim=1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = _steps(
        x.shape[0], epochs=epochs, batch_size=batch_size, min_steps=min_steps, max_steps=max_steps
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps) if schedule == "cosine" else None
    model.train()
    perm, pos = torch.randperm(x.shape[0], generator=gen).to(x.device), 0
    for _ in range(steps):
        if pos >= perm.shape[0]:
            perm, pos = torch.randperm(x.shape[0], generator=gen).to(x.device), 0
        idx = perm[pos : pos + batch_size]
        pos += batch_size
        logits = model(x[idx])
        if soft:
            logp = F.log_softmax(logits / temperature, dim=1)
            loss = -(answers[idx] * logp).sum(1).mean() * temperature**2
        else:
            loss = F.cross_entropy(logits, answers[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
    model.eval()
    return model


def _jacobian_step(
    model: nn.Module,
    x: torch.Tensor,
    labels: torch.Tensor,
    lam: float | torch.Tensor,
    bounds: Bounds,
) -> torch.Tensor:
    """x + λ·sign(∂F_label/∂x) on the surrogate F (Papernot et al. 2017, eq. 4); ``lam`` may
    be per feature (broadcastable to one sample). Frozen features do not move."""
    with eval_mode(model):
        xg = x.detach().clone().requires_grad_(True)
        out = F.log_softmax(model(xg), dim=1).gather(1, labels[:, None]).sum()
        (grad,) = torch.autograd.grad(out, xg)
    return clip(x + lam * grad.sign(), bounds, ref=x).detach()


Train = Callable[..., nn.Module]


def _grow(
    source: str,
    target: QueryTarget,
    model: nn.Module,
    pool: torch.Tensor,
    budgets: list[int],
    train: Train,
    *,
    bounds: Bounds,
    gen: torch.Generator,
    seed_size: int,
    lam: float,
    tau: int,
) -> Iterator[tuple[int, nn.Module, torch.Tensor, torch.Tensor]]:
    """Spend the budgets in increasing order on one growing query set, training the same
    surrogate on. Yields (budget, surrogate, queries, answers) at every budget."""
    if source != "jacobian":
        x = draw_queries(source, pool, budgets[-1], bounds=bounds, generator=gen)
        answers = target(x)
        for b in budgets:
            model = train(model, x[:b], answers[:b])
            yield b, model, x[:b], answers[:b]
        return
    seed_n = min(pool.shape[0], seed_size, budgets[0])
    x = pool[torch.randperm(pool.shape[0], generator=gen)[:seed_n].to(pool.device)]
    answers = target(x)
    model = train(model, x, answers)
    lo, hi = limits(bounds, pool)
    rho, step = 0, lam * (hi - lo)
    for b in budgets:
        while x.shape[0] < b:
            take = min(x.shape[0], b - x.shape[0])
            pick = torch.randperm(x.shape[0], generator=gen)[:take].to(x.device)
            sign = -1.0 if (rho // max(1, tau)) % 2 else 1.0
            labels = as_labels(answers[pick]).clamp_min(0)
            new = _jacobian_step(model, x[pick], labels, sign * step, bounds)
            x, answers = torch.cat([x, new]), torch.cat([answers, target(new)])
            rho += 1
            model = train(model, x, answers, light=x.shape[0] < b)
        yield b, model, x, answers


class ModelExtraction:
    """Steal a copy of a query target (Knockoff / Copycat, or Jacobian augmentation).

    ``build`` returns a fresh surrogate (for instance the victim's zoo architecture);
    ``source`` picks the query set (module docstring); ``budget`` is the number of queries.
    ``fit(target, pool)`` spends exactly ``budget`` queries (refused ones included) and
    trains the surrogate on the answers. Learned: ``surrogate_``, ``queries_``,
    ``x_queried_``, ``answers_``."""

    def __init__(
        self,
        build: Callable[[], nn.Module],
        *,
        source: str = "pool",
        budget: int = 1000,
        epochs: int = 10,
        batch_size: int = 64,
        lr: float = 3e-3,
        min_steps: int = 200,
        max_steps: int = 1500,
        temperature: float = 1.0,
        schedule: str = "cosine",
        seed_size: int = 150,
        jacobian_lambda: float = 0.1,
        jacobian_tau: int = 3,
        bounds: Bounds = (0.0, 1.0),
        seed: int = 0,
    ) -> None:
        self.build = build
        self.source = source
        self.budget = budget
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.min_steps = min_steps
        self.max_steps = max_steps
        self.temperature = temperature
        self.schedule = schedule
        self.seed_size = seed_size
        self.jacobian_lambda = jacobian_lambda
        self.jacobian_tau = jacobian_tau
        self.bounds = bounds
        self.seed = seed

    def _check(self, pool: torch.Tensor, budgets: list[int]) -> None:
        if self.source not in SOURCES:
            raise AttackError(
                f"unknown query source {self.source!r}: choose from {', '.join(SOURCES)}"
            )
        if not budgets or min(budgets) < 1:
            raise AttackError(f"query budgets must be >= 1, got {budgets}")
        if pool.ndim < 2 or pool.shape[0] == 0:
            raise AttackError(
                "the attacker's pool must be a non-empty image batch (N, C, H, W) or a batch of "
                "feature vectors (N, D)"
            )

    def steps(
        self, target: QueryTarget | nn.Module, pool: torch.Tensor, budgets: list[int]
    ) -> Iterator[tuple[int, ModelExtraction]]:
        """Extract at several budgets on one growing query set (nested, as an attacker who
        keeps going would), continuing to train the same surrogate. Yields
        ``(budget, self)`` with the learned attributes set for that budget."""
        budgets = sorted({int(b) for b in budgets})
        self._check(pool, budgets)
        target = as_target(target)
        gen = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        before = target.queries

        def train(
            model: nn.Module, x: torch.Tensor, answers: torch.Tensor, light: bool = False
        ) -> nn.Module:
            # between two budgets (Jacobian rounds) a shorter warm-started refresh is enough
            div = 3 if light else 1
            return train_surrogate(
                model,
                x,
                answers,
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                min_steps=max(1, self.min_steps // div),
                max_steps=max(1, self.max_steps // div),
                temperature=self.temperature,
                schedule=self.schedule,
                generator=gen,
            )

        for b, model, x, answers in _grow(
            self.source,
            target,
            self.build(),
            pool,
            budgets,
            train,
            bounds=self.bounds,
            gen=gen,
            seed_size=self.seed_size,
            lam=self.jacobian_lambda,
            tau=self.jacobian_tau,
        ):
            self.surrogate_, self.x_queried_, self.answers_ = model, x, answers
            self.queries_ = target.queries - before
            yield b, self

    def fit(self, target: QueryTarget | nn.Module, pool: torch.Tensor) -> ModelExtraction:
        for _ in self.steps(target, pool, [self.budget]):
            pass
        return self

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        if not hasattr(self, "surrogate_"):
            raise NotFittedError(self)
        return predict_labels(self.surrogate_, x)

    def fidelity(self, x: torch.Tensor, victim_labels: torch.Tensor) -> float:
        """Fraction of ``x`` on which the surrogate agrees with the victim's labels."""
        return float((self.predict(x) == victim_labels).float().mean())


@dataclass
class ExtractionCurve:
    """Fidelity and surrogate accuracy against the query budget for one source."""

    source: str
    answers: str
    budgets: list[int]
    fidelity: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    queries: int = 0
    surrogate: nn.Module | None = None


def extraction_curve(
    target: QueryTarget | nn.Module,
    build: Callable[[], nn.Module],
    pool: torch.Tensor,
    x_eval: torch.Tensor,
    y_eval: torch.Tensor,
    victim_eval: torch.Tensor,
    *,
    source: str,
    budgets: list[int],
    progress: Callable[[], None] | None = None,
    **params: object,
) -> ExtractionCurve:
    """:meth:`ModelExtraction.steps` over ``budgets``, measuring fidelity (against
    ``victim_eval``, the victim's labels on ``x_eval``) and surrogate accuracy (against
    ``y_eval``) at each. ``params`` go to :class:`ModelExtraction`. ``surrogate`` is the
    one of the largest budget, ``queries`` the total spent."""
    target = as_target(target)
    est = ModelExtraction(build, source=source, **params)  # type: ignore[arg-type]
    curve = ExtractionCurve(
        source=source, answers=target.kind, budgets=sorted({int(b) for b in budgets})
    )
    for _, fitted in est.steps(target, pool, budgets):
        pred = fitted.predict(x_eval)
        curve.fidelity.append(float((pred == victim_eval).float().mean()))
        curve.accuracy.append(float((pred == y_eval).float().mean()))
        curve.surrogate, curve.queries = fitted.surrogate_, fitted.queries_
        if progress is not None:
            progress()
    return curve


def transfer_attack(
    surrogate: nn.Module,
    target: QueryTarget | nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float,
    norm: str = "inf",
    steps: int = 20,
    bounds: Bounds = (0.0, 1.0),
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PGD crafted on the surrogate, judged by the target's answers (one query per point):
    returns a boolean mask of the points whose victim label is no longer ``y``."""
    x_adv = pgd(
        surrogate, x, y, eps=eps, norm=norm, steps=steps, bounds=bounds, generator=generator
    )
    labels = as_labels(as_target(target)(x_adv))
    return (labels != y) & (labels >= 0)
