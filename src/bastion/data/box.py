"""The valid input region of a dataset: per-feature bounds and frozen features.

Lives with the data (the bottom layer) so datasets, attacks, defenses and the gateway share
one definition; :mod:`bastion.attacks` re-exports it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from bastion.errors import AttackError


@dataclass(frozen=True)
class Box:
    """The valid input region: per-feature lower and upper bounds ``lo``/``hi`` (tensors
    broadcastable to one sample, e.g. shape () for images in [0, 1] or (D,) for a tabular
    row) and an optional boolean ``frozen`` mask of features an attacker cannot change.

    ``lo, hi = box`` unpacks the bounds, so a ``Box`` goes wherever a ``(low, high)`` pair
    went. :meth:`clip` is the one projection every attack applies last."""

    lo: torch.Tensor
    hi: torch.Tensor
    frozen: torch.Tensor | None = None

    def __iter__(self) -> Iterator[torch.Tensor]:
        yield self.lo
        yield self.hi

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int) -> torch.Tensor:
        return (self.lo, self.hi)[i]

    @property
    def span(self) -> float:
        """The mean width ``hi − lo`` over features: a scalar scale for step-size defaults."""
        return float((self.hi - self.lo).float().mean())

    @property
    def scalar(self) -> bool:
        """True when the bounds are one (low, high) pair for every feature and nothing is frozen."""
        return self.lo.numel() == 1 and self.hi.numel() == 1 and self.frozen is None

    def to(self, like: torch.Tensor) -> Box:
        """The box on ``like``'s device and dtype."""
        frozen = None if self.frozen is None else self.frozen.to(like.device)
        return Box(self.lo.to(like), self.hi.to(like), frozen)

    def clip(self, t: torch.Tensor, ref: torch.Tensor | None = None) -> torch.Tensor:
        """``t`` clamped into the bounds; frozen features reset to ``ref`` (the clean input)."""
        lo, hi = self.lo.to(t), self.hi.to(t)
        out = t.clamp(lo, hi)
        if self.frozen is not None:
            if ref is None:
                raise AttackError("a box with frozen features needs the clean input to clip to")
            out = torch.where(self.frozen.to(t.device), ref.to(t), out)
        return out

    def contains(self, x: torch.Tensor, tol: float = 1e-6) -> bool:
        """Whether every value of the batch ``x`` lies within the bounds (up to ``tol``·span)."""
        slack = tol * max(self.span, 1e-12)
        lo, hi = self.lo.to(x), self.hi.to(x)
        return bool(((x >= lo - slack) & (x <= hi + slack)).all())
