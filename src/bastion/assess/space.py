"""The attack space: where ε means what the threat model says, for every modality.

ε is either **absolute** (input units: ``‖x_adv − x‖ ≤ ε``) or **relative** to each
feature's range (``|x_adv,i − x_i| ≤ ε · (hi_i − lo_i)`` under L∞; the L2 ball is taken in
range-normalised units). Relative is the tabular default: one absolute ε would mean
nothing across features measured in years, dollars and ratios.

Every attack runs unchanged in a space ``z`` where ε is one number: for relative ε,
``z = (x − lo) / (hi − lo)``, the model is composed with the inverse map, and the box is
[0, 1] per feature (features of zero range are frozen); for absolute ε, ``z = x``. Frozen
features are kept at their clean values by the box. After the attack, integer features are
rounded in input units and the result is checked again (:meth:`AttackSpace.finalize`), so
a reported adversarial example is one the data could really contain.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bastion.data.box import Box
from bastion.data.spec import EpsMode, InputSpec


class Rescaled(nn.Module):
    """``module(lo + z · scale)``: the model seen from the normalised attack space."""

    def __init__(self, module: nn.Module, lo: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        self.module = module
        self.register_buffer("lo", lo.clone())
        self.register_buffer("scale", scale.clone())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.module(self.lo + z * self.scale)


@dataclass(frozen=True)
class AttackSpace:
    """Maps inputs to the space attacks run in, and back (see the module docstring)."""

    spec: InputSpec
    mode: EpsMode
    lo: torch.Tensor
    scale: torch.Tensor
    box: Box
    integer: torch.Tensor | None

    @classmethod
    def build(cls, spec: InputSpec, mode: EpsMode | None = None) -> AttackSpace:
        mode = mode or spec.default_eps_mode()
        lo, hi = spec.lower_tensor(), spec.upper_tensor()
        width = hi - lo
        frozen = spec.frozen_mask()
        if bool((width <= 0).any()):  # constant features cannot move: freeze them
            zero = (width <= 0).expand(spec.shape) if width.ndim else None
            if zero is not None:
                frozen = zero if frozen is None else frozen | zero
        if mode == "relative":
            scale = torch.where(width > 0, width, torch.ones_like(width))
            box = Box(torch.zeros_like(lo), (width > 0).to(lo.dtype), frozen)
            return cls(spec, mode, lo, scale, box, spec.integer_mask())
        return cls(
            spec,
            mode,
            torch.zeros_like(lo),
            torch.ones_like(lo),
            Box(lo, hi, frozen),
            spec.integer_mask(),
        )

    @property
    def identity(self) -> bool:
        return bool((self.lo == 0).all() and (self.scale == 1).all())

    def to_z(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.identity else (x - self.lo.to(x)) / self.scale.to(x)

    def from_z(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.identity else self.lo.to(z) + z * self.scale.to(z)

    def model(self, module: nn.Module) -> nn.Module:
        """``module`` as seen from the attack space (the module itself when that is x)."""
        if self.identity:
            return module
        return Rescaled(module, self.lo, self.scale).to(next(module.parameters(), self.lo).device)

    def query(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Callable:
        """A query function ``fn(x)`` as seen from the attack space."""
        if self.identity:
            return fn
        return lambda z: fn(self.from_z(z))

    def finalize(self, z_adv: torch.Tensor, z_clean: torch.Tensor) -> torch.Tensor:
        """Make integer features whole again (in input units), then clip into the box: the
        post-processing an adversarial example needs before its success is re-checked.
        The change of an integer feature is truncated towards its clean (whole) value, so
        the rounded point stays inside the ε-ball."""
        if self.integer is None:
            return z_adv
        x, x0 = self.from_z(z_adv), self.from_z(z_clean).round()
        x = torch.where(self.integer.to(x.device), x0 + (x - x0).trunc(), x)
        return self.box.clip(self.to_z(x), z_clean)

    def to_x(self, z_adv: torch.Tensor, x_clean: torch.Tensor) -> torch.Tensor:
        """A point :meth:`finalize` made, back in input units, exactly: the z round trip is
        not exact in floating point, so frozen features are set to their clean values and
        integer features (whole by :meth:`finalize`, up to round-off) rounded."""
        x = self.from_z(z_adv)
        if self.integer is not None:
            x = torch.where(self.integer.to(x.device), x.round(), x)
        if self.box.frozen is not None:
            x = torch.where(self.box.frozen.to(x.device), x_clean.to(x), x)
        return x

    def describe(self, eps: float) -> str:
        if self.mode == "relative":
            return f"ε={eps:g} relative to each feature's range"
        return f"ε={eps:g} in input units"
