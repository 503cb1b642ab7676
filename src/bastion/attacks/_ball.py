"""Shared pieces of the white-box evasion attacks: argument checks, eval mode, ε-ball
projections, steepest-ascent directions and random starts. Import them from
:mod:`bastion.attacks.evasion`, which re-exports every public name here."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bastion.data.box import Box
from bastion.errors import AttackError

NORMS = ("inf", "2")


Bounds = tuple[float, float] | Box


def as_box(bounds: Bounds) -> Box:
    """A :class:`Box` from a ``(low, high)`` pair of numbers or tensors (a Box passes through)."""
    if isinstance(bounds, Box):
        return bounds
    try:
        lo, hi = bounds
    except (TypeError, ValueError):
        raise AttackError(f"bounds must be (low, high) or a Box, got {bounds!r}") from None
    lo_t = torch.as_tensor(lo, dtype=torch.float32) if not isinstance(lo, torch.Tensor) else lo
    hi_t = torch.as_tensor(hi, dtype=torch.float32) if not isinstance(hi, torch.Tensor) else hi
    return Box(lo_t, hi_t)


def clip(t: torch.Tensor, bounds: Bounds, ref: torch.Tensor | None = None) -> torch.Tensor:
    """Clamp ``t`` into ``bounds`` (a pair or a :class:`Box`; frozen features from ``ref``)."""
    if not isinstance(bounds, Box):
        lo, hi = bounds
        if not isinstance(lo, torch.Tensor) and not isinstance(hi, torch.Tensor):
            return t.clamp(lo, hi)
    return as_box(bounds).clip(t, ref)


def span(bounds: Bounds) -> float:
    """The mean width of ``bounds`` (a scalar, for step sizes and noise scales)."""
    return as_box(bounds).span


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode (and freeze its parameters' grads) for the duration; the
    previous mode and ``requires_grad`` flags are restored afterwards, even on error."""
    was_training = model.training
    flags = [p.requires_grad for p in model.parameters()]
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    try:
        yield model
    finally:
        model.train(was_training)
        for p, flag in zip(model.parameters(), flags, strict=True):
            p.requires_grad_(flag)


def check_args(x: torch.Tensor, y: torch.Tensor, eps: float, norm: str, bounds: Bounds) -> str:
    """Validate the arguments every attack shares; return the canonical norm ('inf' or '2').

    Raises :class:`AttackError` for an unknown norm, a negative or non-finite ε, bounds that
    are not ``(low, high)``, mismatched or malformed ``x``/``y``, NaN/Inf in ``x``, or ``x``
    outside ``bounds``."""
    canon = str(norm).lower().lstrip("l")
    if canon not in NORMS:
        raise AttackError(f"unknown norm {norm!r}: use 'inf' or '2'")
    try:
        eps_f = float(eps)
    except (TypeError, ValueError):
        raise AttackError(f"eps must be a non-negative number, got {eps!r}") from None
    if not math.isfinite(eps_f) or eps_f < 0:
        raise AttackError(f"eps must be a non-negative number, got {eps}")
    box = as_box(bounds)
    if not bool((box.lo <= box.hi).all()) or not box.span > 0:
        raise AttackError(
            f"bounds must be (low, high) with low <= high and some width, got {bounds}"
        )
    if x.ndim < 2:
        raise AttackError(f"x must be a batch of shape (N, ...), got shape {tuple(x.shape)}")
    if y.ndim != 1:
        raise AttackError(f"y must hold one label per sample, shape (N,), got {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise AttackError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    if not torch.is_floating_point(x):
        raise AttackError(f"x must be floating point, got {x.dtype}")
    if x.numel() and not torch.isfinite(x).all():
        raise AttackError("x contains NaN or Inf values: clean the inputs before attacking")
    if x.numel() and not box.contains(x):
        lo, hi = float(x.min()), float(x.max())
        where = "bounds" if box.lo.numel() == 1 else "the per-feature bounds"
        shown = f" {(float(box.lo), float(box.hi))}" if box.lo.numel() == 1 else ""
        raise AttackError(
            f"x spans [{lo:.4g}, {hi:.4g}], outside {where}{shown}: "
            "pass the data's bounds (Dataset.box)"
        )
    return canon


def check_budget(*, steps: int, restarts: int = 1) -> None:
    """Raise :class:`AttackError` unless ``steps`` and ``restarts`` are positive integers."""
    if int(steps) != steps or steps < 1:
        raise AttackError(f"steps must be an integer >= 1, got {steps}")
    if int(restarts) != restarts or restarts < 1:
        raise AttackError(f"restarts must be an integer >= 1, got {restarts}")


def expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Reshape a per-sample vector (N,) so it broadcasts against a batch (N, ...)."""
    return v.view(-1, *([1] * (like.ndim - 1)))


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Project a perturbation onto the ε-ball of the given norm."""
    if norm == "inf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _flat_norm(delta)).clamp(max=1.0)


def steepest_step(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """The unit-norm steepest-ascent direction for the norm (sign for L∞, normalised for L2)."""
    return grad.sign() if norm == "inf" else grad / _flat_norm(grad)


def noise(
    shape: torch.Size | tuple[int, ...],
    kind: str,
    generator: torch.Generator | None,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Uniform [0, 1) (``kind='rand'``) or standard normal (``'randn'``) noise drawn in
    float32 from ``generator`` on the generator's own device, then moved to ``device`` and
    cast to ``dtype`` (so a seed gives the same draw whatever the input's precision)."""
    draw = torch.rand if kind == "rand" else torch.randn
    where = generator.device if generator is not None else device
    return draw(tuple(shape), generator=generator, device=where).to(device=device, dtype=dtype)


def random_start(
    x: torch.Tensor, eps: float, norm: str, generator: torch.Generator | None
) -> torch.Tensor:
    """A uniform random point in the ε-ball (L∞) or on a random L2 direction inside it."""
    if norm == "inf":
        return (2 * noise(x.shape, "rand", generator, x.device, x.dtype) - 1) * eps
    d = noise(x.shape, "randn", generator, x.device, x.dtype)
    r = noise((x.shape[0],), "rand", generator, x.device, x.dtype)
    return d / _flat_norm(d) * eps * expand(r, x)


@contextmanager
def fast_layout(model: nn.Module) -> Iterator[nn.Module]:
    """On CPU, hold the model's 4-D (convolution) weights in channels-last layout for the
    duration: oneDNN's NHWC kernels run forward + backward 1.2–1.7× faster than NCHW on the
    small CNNs measured (benchmarks/bench_evasion.py). Values are untouched and the original
    tensors are put back afterwards, even on error; a no-op for models without such weights
    or off the CPU."""
    params = [p for p in model.parameters() if p.ndim == 4 and p.device.type == "cpu"]
    params = [p for p in params if not p.is_contiguous(memory_format=torch.channels_last)]
    saved = [p.data for p in params]
    for p in params:
        p.data = p.data.contiguous(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        for p, data in zip(params, saved, strict=True):
            p.data = data
