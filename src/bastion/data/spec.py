"""The input spec: what one model input is, so nothing downstream has to guess.

An :class:`InputSpec` says the modality (``image``, ``tabular``; ``sequence`` reserved), the
per-sample shape (images channels-first, as Bastion holds them internally), the layout the
data came in, **per-feature bounds** (one pair for every feature, or a single pair for all),
and the integer and frozen (immutable) features by flat index. It is part of every dataset's
provenance manifest and of the report.

Bounds are never guessed from the values' magnitude: images from image formats are in
[0, 1] by definition; tabular bounds default to the training split's per-feature min/max
(``bounds_source="train-min-max"``), or come from a file or flags.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from bastion.data.box import Box
from bastion.errors import DataError

Modality = Literal["image", "tabular", "sequence"]
Layout = Literal["NCHW", "NHWC", "flat"]
EpsMode = Literal["absolute", "relative"]


class InputSpec(BaseModel):
    """One sample's modality, shape, layout, bounds and feature constraints."""

    model_config = ConfigDict(extra="forbid")

    modality: Modality
    shape: list[int] = Field(description="one sample's shape (images: C, H, W)")
    source_layout: Layout = Field("NCHW", description="the layout the data was read in")
    lower: list[float] = Field(description="per-feature lower bounds (flat), or one for all")
    upper: list[float] = Field(description="per-feature upper bounds (flat), or one for all")
    integer: list[int] = Field(default_factory=list, description="flat indices of integer features")
    frozen: list[int] = Field(
        default_factory=list, description="flat indices an attacker cannot change"
    )
    feature_names: list[str] | None = None
    bounds_source: str = Field("", description="where the bounds came from")

    @model_validator(mode="after")
    def _check(self) -> InputSpec:
        d = self.n_features
        if any(s < 1 for s in self.shape) or not self.shape:
            raise ValueError(f"shape must be positive sizes, got {self.shape}")
        for name, vals in (("lower", self.lower), ("upper", self.upper)):
            if len(vals) not in (1, d):
                raise ValueError(f"{name} bounds: need 1 or {d} values, got {len(vals)}")
        lo, hi = self.lower_tensor(), self.upper_tensor()
        if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise ValueError("bounds must be finite numbers")
        if bool((lo > hi).any()):
            i = int((lo > hi).flatten().nonzero()[0])
            raise ValueError(f"lower bound above upper bound at feature {i}")
        for name, idx in (("integer", self.integer), ("frozen", self.frozen)):
            bad = [i for i in idx if not 0 <= i < d]
            if bad:
                raise ValueError(f"{name} feature index {bad[0]} outside 0..{d - 1}")
        if self.feature_names is not None and len(self.feature_names) != d:
            raise ValueError(f"{len(self.feature_names)} feature names for {d} features")
        return self

    @property
    def n_features(self) -> int:
        n = 1
        for s in self.shape:
            n *= int(s)
        return n

    def _per_feature(self, vals: list[float]) -> torch.Tensor:
        t = torch.tensor(vals, dtype=torch.float32)
        return t.reshape(()) if t.numel() == 1 else t.reshape(self.shape)

    def lower_tensor(self) -> torch.Tensor:
        """Lower bounds broadcastable to one sample (shape () when one value for all)."""
        return self._per_feature(self.lower)

    def upper_tensor(self) -> torch.Tensor:
        return self._per_feature(self.upper)

    def _mask(self, idx: list[int]) -> torch.Tensor | None:
        if not idx:
            return None
        m = torch.zeros(self.n_features, dtype=torch.bool)
        m[torch.tensor(idx, dtype=torch.long)] = True
        return m.reshape(self.shape)

    def frozen_mask(self) -> torch.Tensor | None:
        return self._mask(self.frozen)

    def integer_mask(self) -> torch.Tensor | None:
        return self._mask(self.integer)

    def box(self) -> Box:
        """The valid region as a :class:`~bastion.data.box.Box` (bounds + frozen mask)."""
        return Box(self.lower_tensor(), self.upper_tensor(), self.frozen_mask())

    def scalar_bounds(self) -> tuple[float, float] | None:
        """``(low, high)`` when every feature shares one pair, else None."""
        if len(self.lower) == 1 and len(self.upper) == 1:
            return float(self.lower[0]), float(self.upper[0])
        return None

    def default_eps_mode(self) -> EpsMode:
        """Tabular ε is relative to each feature's range; images' is absolute (input units)."""
        return "relative" if self.modality == "tabular" else "absolute"

    def describe(self) -> str:
        sb = self.scalar_bounds()
        bounds = f"[{sb[0]:g}, {sb[1]:g}]" if sb else f"per-feature ({self.bounds_source})"
        extra = []
        if self.integer:
            extra.append(f"{len(self.integer)} integer")
        if self.frozen:
            extra.append(f"{len(self.frozen)} frozen")
        tail = f", {', '.join(extra)} feature(s)" if extra else ""
        return f"{self.modality} {tuple(self.shape)} in {bounds}{tail}"


def image_spec(
    shape: tuple[int, ...],
    *,
    bounds: tuple[float, float] = (0.0, 1.0),
    source_layout: Layout = "NCHW",
    source: str = "",
) -> InputSpec:
    """Images (C, H, W) with one (low, high) pair for every pixel."""
    return InputSpec(
        modality="image",
        shape=list(shape),
        source_layout=source_layout,
        lower=[float(bounds[0])],
        upper=[float(bounds[1])],
        bounds_source=source or "image range",
    )


def tabular_spec_from(
    x_train: torch.Tensor,
    *,
    integer: list[int] | None = None,
    frozen: list[int] | None = None,
    feature_names: list[str] | None = None,
    lower: list[float] | None = None,
    upper: list[float] | None = None,
    bounds_source: str | None = None,
) -> InputSpec:
    """A tabular spec whose bounds default to the training rows' per-feature min/max.
    Integer features default to the columns whose training values are all whole numbers."""
    if x_train.ndim != 2:
        raise DataError(f"tabular data must be (N, features), got shape {tuple(x_train.shape)}")
    flat = x_train.float()
    lo = lower if lower is not None else flat.amin(0).tolist()
    hi = upper if upper is not None else flat.amax(0).tolist()
    if integer is None:
        whole = (flat == flat.round()).all(0)
        integer = [int(i) for i in whole.nonzero().flatten()]
    return InputSpec(
        modality="tabular",
        shape=[int(x_train.shape[1])],
        source_layout="flat",
        lower=[float(v) for v in lo],
        upper=[float(v) for v in hi],
        integer=sorted(integer),
        frozen=sorted(frozen or []),
        feature_names=feature_names,
        bounds_source=bounds_source or ("train-min-max" if lower is None else "given"),
    )
