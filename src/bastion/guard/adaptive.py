"""An adaptive attacker for the guard: it knows every detector and its calibrated threshold.

A detector evaluated only against attacks that do not know it says little (Carlini & Wagner
2017, "Adversarial Examples Are Not Easily Detected"; Tramèr, Carlini, Brendel & Madry 2020,
"On Adaptive Attacks to Adversarial Example Defenses"). :func:`adaptive_attack` searches the
same ε-ball as the non-adaptive PGD for a point the model misclassifies **and** no detector
flags, with orthogonal projected gradient descent (Bryniarski, Hingun, Pachuca, Wang &
Carlini 2022, ICLR, "Evading Adversarial Example Detection Defenses with Orthogonal
Projected Gradient Descent"):

- the classification objective is the logit margin ``z_y − max_{j≠y} z_j`` (misclassified
  when < 0); the detection objective is ``Σ_d Σ_v relu((s_dv − thr_d) / |thr_d| + m)``, a
  hinge on every detector's score (for Mahalanobis, on every feature view, since its score
  is the maximum over views) relative to its calibrated threshold, with a small margin ``m``;
- while the point is still classified correctly the step follows the classification gradient
  with its component along the detection gradient removed; once misclassified but flagged, it
  follows the detection gradient with its component along the classification gradient
  removed, so neither step undoes the other to first order (``method="orthogonal"``).
  ``method="joint"`` descends ``relu(margin) + λ · hinge`` instead;
- a point leaves the active set as soon as an iterate is misclassified and under every
  threshold (the attack's success); otherwise the misclassified iterate closest to passing
  (smallest largest score/threshold ratio) is kept, else the last iterate.

Differentiable scores (:class:`GuardScorer`): Mahalanobis, reconstruction and z-score are
torch ops on the input and are differentiated exactly (Mahalanobis through the model's
hidden layers). Feature squeezing's bit-depth reduction is a rounding with zero gradient: it
is differentiated by BPDA (Athalye, Carlini & Wagner 2018), the identity in the backward
pass; its median filter selects one input value per window, so its gradient is exact. Any
other detector is differentiated through its own ``_score`` where that is a torch graph;
one that is not is still checked (a point it flags is not a success) but not optimised
against, and :attr:`GuardScorer.gradients` says so.

Works in the attack space of the input spec (:class:`~bastion.assess.space.AttackSpace`):
images in input units, feature vectors with ε relative to each feature's range, frozen
features kept, integer features made whole (:meth:`AttackSpace.finalize`) before success
is judged.
"""

from __future__ import annotations

import inspect
import logging
import math
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from bastion.assess.space import AttackSpace
from bastion.attacks.evasion import (
    check_args,
    eval_mode,
    mask_frozen,
    project,
    random_start,
    steepest_step,
)
from bastion.attacks.evasion import clip as clip_box
from bastion.errors import AttackError
from bastion.guard.base import Detector
from bastion.guard.detectors import (
    FeatureSqueezingDetector,
    ReconstructionDetector,
    ZScoreDetector,
    median_smooth,
    reduce_bit_depth,
)
from bastion.guard.guard import Guard
from bastion.guard.mahalanobis import MahalanobisDetector, view_features
from bastion.guard.tap import ModelTap, TapOutputs

log = logging.getLogger(__name__)
Method = Literal["orthogonal", "joint"]
METHODS: tuple[str, ...] = ("orthogonal", "joint")


def _tap_forward(tap: ModelTap, x: torch.Tensor) -> TapOutputs:
    """The tap's forward pass with gradients (``ModelTap.__call__`` without its no_grad)."""
    return inspect.unwrap(type(tap).__call__)(tap, x)


def _bpda_bits(
    x: torch.Tensor, bits: int, bounds: tuple[torch.Tensor, torch.Tensor]
) -> torch.Tensor:
    """Bit-depth reduction forward, identity backward (BPDA)."""
    return x + (reduce_bit_depth(x, bits, bounds) - x).detach()


class GuardScorer:
    """Every detector's score as a differentiable function of the input, with its threshold.

    ``__call__(x)`` returns the model's logits and, per detector, a (N, V) tensor of scores
    (V = 1 except Mahalanobis: one column per feature view, the detector's score being their
    maximum). ``gradients`` names how each detector is differentiated."""

    def __init__(self, guard: Guard, module: nn.Module) -> None:
        self.guard = guard
        self.module = module
        self.thresholds = guard.thresholds
        self.gradients: dict[str, str] = {}
        for name, det in guard.detectors.items():
            if isinstance(det, MahalanobisDetector):
                how = "exact (through the model's hidden layers)"
            elif isinstance(det, (ReconstructionDetector, ZScoreDetector)):
                how = "exact (torch ops on the input)"
            elif isinstance(det, FeatureSqueezingDetector):
                how = "BPDA for the bit-depth reduction (identity backward); median filter exact"
            else:
                how = "through the detector's own score where it is a torch graph"
            self.gradients[name] = how

    def _logits(self, det_model: object, x: torch.Tensor) -> torch.Tensor:
        if isinstance(det_model, ModelTap):
            return det_model.model(x)
        return self.module(x)

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        taps: dict[int, TapOutputs] = {}
        logits: torch.Tensor | None = None
        tap = self.guard.tap
        if isinstance(tap, ModelTap) and tap.model is self.module:
            out = _tap_forward(tap, x)
            taps[id(tap)] = out
            logits = out.logits
        if logits is None:
            logits = self.module(x)
        scores: dict[str, torch.Tensor] = {}
        for name, det in self.guard.detectors.items():
            scores[name] = self._score(name, det, x, logits, taps)
        return logits, scores

    def _score(
        self,
        name: str,
        det: Detector,
        x: torch.Tensor,
        logits: torch.Tensor,
        taps: dict[int, TapOutputs],
    ) -> torch.Tensor:
        if isinstance(det, MahalanobisDetector):
            tap = det.model
            if not isinstance(tap, ModelTap):
                raise AttackError("the Mahalanobis detector needs the model's hidden layers")
            if id(tap) not in taps:
                taps[id(tap)] = _tap_forward(tap, x)
            out = taps[id(tap)]
            d = torch.stack(
                [det._distance(view_features(out, v), j) for j, v in enumerate(det.views_)], 1
            )
            return (d - det.loc_) / det.scale_
        if isinstance(det, FeatureSqueezingDetector):
            same = det.model is self.guard.tap and (
                not isinstance(det.model, ModelTap) or det.model.model is self.module
            )
            base = logits if same else self._logits(det.model, x)
            p0 = base.softmax(1)
            views = [_bpda_bits(x, det.bit_depth, det._bounds(x))]
            median = det._median(x)
            if median is not None:
                views.append(median_smooth(x, median))
            p = self._logits(det.model, torch.cat(views)).softmax(1)
            p = p.view(len(views), x.shape[0], -1)
            return (p - p0[None]).abs().sum(2).max(0).values[:, None]
        s = det._score(x, None)
        if not s.requires_grad and x.requires_grad:
            self.gradients[name] = "no gradient: checked, not optimised against"
        return s.float().reshape(x.shape[0], -1).amax(1, keepdim=True)


@dataclass(frozen=True)
class AdaptiveResult:
    """The attack's output for a batch: ``x_adv`` in input units (integer features whole),
    whether the model misclassifies it, and whether the attack judged it to be under every
    threshold (``evaded``; the evaluation re-scores with the guard itself)."""

    x_adv: torch.Tensor
    misclassified: torch.Tensor
    evaded: torch.Tensor
    gradients: dict[str, str] = field(default_factory=dict)


def _ratio(scores: dict[str, torch.Tensor], thresholds: dict[str, float]) -> torch.Tensor:
    """Per sample, the largest score/threshold excess over detectors and views, in units of
    |threshold| (> 0 exactly when some detector fires)."""
    parts = []
    for name, s in scores.items():
        t = thresholds[name]
        parts.append(((s - t) / max(abs(t), 1e-6)).amax(1))
    return torch.stack(parts, 1).amax(1)


def _hinge(scores: dict[str, torch.Tensor], thresholds: dict[str, float], m: float) -> torch.Tensor:
    total = torch.zeros(
        next(iter(scores.values())).shape[0], device=next(iter(scores.values())).device
    )
    for name, s in scores.items():
        t = thresholds[name]
        total = total + torch.relu((s - t) / max(abs(t), 1e-6) + m).sum(1)
    return total


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    zy = logits.gather(1, y[:, None])[:, 0]
    other = logits.clone()
    other.scatter_(1, y[:, None], -torch.inf)
    return zy - other.amax(1)


def _orthogonal(g: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``g`` without its component along ``other`` (per sample, flattened)."""
    gf, of = g.flatten(1), other.flatten(1)
    coef = (gf * of).sum(1) / of.pow(2).sum(1).clamp_min(1e-20)
    return (gf - coef[:, None] * of).view_as(g)


def _run(
    scorer: GuardScorer,
    z0: torch.Tensor,
    y: torch.Tensor,
    space: AttackSpace,
    *,
    eps: float,
    steps: int,
    alpha: float,
    norm: str,
    method: str,
    lam: float,
    margin: float,
    random_init: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One run from a random start: (best point in z, state 0/1/2, its largest excess)."""
    thr, box = scorer.thresholds, space.box
    n = z0.shape[0]
    best = z0.clone()
    state = torch.zeros(n, dtype=torch.long)  # 0 none, 1 misclassified but flagged, 2 success
    best_ratio = torch.full((n,), torch.inf)
    cur = z0.clone()
    if random_init:
        cur = clip_box(z0 + random_start(z0, eps, norm, generator), box, ref=z0)
    active = torch.arange(n)
    for t in range(steps + 1):
        za = cur.detach().requires_grad_(t < steps)
        with torch.enable_grad():
            logits, scores = scorer(space.from_z(za))
            m = _margin(logits, y[active])
            hinge = _hinge(scores, thr, margin)
        with torch.no_grad():
            if space.integer is None:
                mis = m.detach() < 0
                ratio = _ratio({k: v.detach() for k, v in scores.items()}, thr)
                cand = za.detach()
            else:  # judge the point the data could contain
                cand = space.finalize(za.detach(), z0[active])
                lg, sc = scorer(space.from_z(cand))
                mis, ratio = _margin(lg, y[active]) < 0, _ratio(sc, thr)
            ok = mis & (ratio < 0)
            better = mis & ~ok & (ratio < best_ratio[active])
            for mask, level in ((better, 1), (ok, 2)):
                idx = active[mask]
                best[idx], state[idx] = cand[mask], level
                best_ratio[idx] = torch.minimum(best_ratio[idx], ratio[mask])
            if t == steps:
                none = state[active] == 0
                best[active[none]] = cand[none]
                break
            keep = ~ok
            if not bool(keep.any()):
                break
        with torch.enable_grad():
            g_cls = torch.autograd.grad(m.sum(), za, retain_graph=hinge.requires_grad)[0]
            g_det = (
                torch.autograd.grad(hinge.sum(), za)[0]
                if hinge.requires_grad
                else torch.zeros_like(za)
            )
        with torch.no_grad():
            shape = (-1, *([1] * (za.ndim - 1)))
            flagged, correct = (hinge > 0).view(shape), (~mis).view(shape)
            if method == "orthogonal":
                along_cls = torch.where(flagged, _orthogonal(g_cls, g_det), g_cls)
                direction = torch.where(correct, along_cls, _orthogonal(g_det, g_cls))
            else:  # joint: relu(margin) + λ · hinge
                direction = torch.where(correct, g_cls, torch.zeros_like(g_cls)) + lam * g_det
            step = steepest_step(mask_frozen(direction, box), norm)
            a_t = alpha * (0.1 + 0.45 * (1 + math.cos(math.pi * t / steps)))  # cosine decay
            ref = z0[active]
            nxt = clip_box(ref + project(za.detach() - a_t * step - ref, eps, norm), box, ref=ref)
            active, cur = active[keep], nxt[keep]
    return best, state, best_ratio


def adaptive_attack(
    guard: Guard,
    module: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    space: AttackSpace,
    eps: float,
    steps: int = 100,
    restarts: int = 2,
    step_size: float | None = None,
    norm: str = "inf",
    method: Method = "orthogonal",
    lam: float = 1.0,
    margin: float = 0.05,
    random_init: bool = True,
    generator: torch.Generator | None = None,
) -> AdaptiveResult:
    """Search the ε-ball (``norm`` L∞ or L2, in ``space``) around each input of ``x`` (input
    units, labels ``y``) for a point that ``module`` misclassifies and no detector of
    ``guard`` flags: ``restarts`` runs of ``steps`` gradient steps each (a restart only on
    the points not yet successful, from a new random start), step size ``step_size``
    (default 10·ε/steps, decayed to a tenth along a cosine). Budget per point: at most
    ``restarts × steps`` forward + backward passes of the model and every detector. See the
    module docstring for the algorithm.

    Example::

        res = adaptive_attack(guard, model, x, y, space=AttackSpace.build(spec), eps=0.1)
        fooled_and_unflagged = res.misclassified & res.evaded
    """
    if method not in METHODS:
        raise AttackError(f"unknown adaptive method {method!r}: use one of {', '.join(METHODS)}")
    for name, v in (("steps", steps), ("restarts", restarts)):
        if int(v) != v or v < 1:
            raise AttackError(f"{name} must be an integer >= 1, got {v}")
    if not margin >= 0:
        raise AttackError(f"margin must be >= 0, got {margin}")
    z0 = space.to_z(x.detach())
    norm = check_args(z0, y, eps, norm, space.box)
    alpha = float(step_size) if step_size is not None else 10.0 * float(eps) / steps
    scorer = GuardScorer(guard, module)
    best = z0.clone()
    state = torch.full((z0.shape[0],), -1, dtype=torch.long)
    ratio = torch.full((z0.shape[0],), torch.inf)
    with eval_mode(module):
        for _ in range(restarts):
            todo = (state < 2).nonzero().flatten()
            if todo.numel() == 0:
                break
            b, s, r = _run(
                scorer,
                z0[todo],
                y[todo],
                space,
                eps=float(eps),
                steps=steps,
                alpha=alpha,
                norm=norm,
                method=method,
                lam=lam,
                margin=margin,
                random_init=random_init,
                generator=generator,
            )
            win = (s > state[todo]) | ((s == state[todo]) & (r < ratio[todo]))
            idx = todo[win]
            best[idx], state[idx], ratio[idx] = b[win], s[win], r[win]
        x_adv = space.to_x(best, x)
        with torch.no_grad():
            logits, scores = scorer(x_adv)
            misclassified = _margin(logits, y) < 0
            evaded = _ratio(scores, scorer.thresholds) < 0
    return AdaptiveResult(x_adv.detach(), misclassified, evaded, dict(scorer.gradients))
