"""The in-memory dataset record and its provenance manifest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import cast

import torch
from pydantic import BaseModel

from bastion.data.box import Box
from bastion.data.spec import InputSpec, image_spec
from bastion.errors import DataError


class DatasetManifest(BaseModel):
    """Provenance of one dataset split: what it is, where it came from, its content hash."""

    name: str
    split: str
    sha256: str
    n: int
    shape: list[int]
    num_classes: int
    class_counts: dict[str, int]
    input_spec: InputSpec
    source: str


def default_spec(x: torch.Tensor, bounds: tuple[float, float] | Box | None) -> InputSpec:
    """The spec of data given without one: 4-D arrays are images (C, H, W) in ``bounds``
    (default [0, 1]); anything else is tabular with the given per-feature bounds, or the
    rows' own min/max."""
    from bastion.data.spec import tabular_spec_from

    if isinstance(bounds, Box):
        lo, hi = bounds.lo.flatten().tolist(), bounds.hi.flatten().tolist()
    elif bounds is not None:
        lo, hi = [float(bounds[0])], [float(bounds[1])]
    else:
        lo = hi = None
    if x.ndim == 4:
        lo, hi = lo or [0.0], hi or [1.0]
        if len(lo) == 1 and len(hi) == 1:
            return image_spec(tuple(x.shape[1:]), bounds=(lo[0], hi[0]))
        return InputSpec(
            modality="image", shape=list(x.shape[1:]), lower=lo, upper=hi, bounds_source="given"
        )
    flat = x.reshape(x.shape[0], -1)
    if lo is not None and len(lo) == 1:
        lo, hi = lo * flat.shape[1], hi * flat.shape[1]
    return tabular_spec_from(flat, lower=lo, upper=hi, integer=[])


@dataclass(frozen=True)
class Dataset:
    """Inputs ``x`` of shape (N, *spec.shape), float32 within the spec's per-feature bounds,
    and int64 labels ``y``. Images are (N, C, H, W); tabular rows (N, D). ``rows`` holds
    each sample's row number in its source (for a file with separate train and test arrays:
    the train rows, then the test rows after them), so a user's row indices (e.g. the
    model's training members) map onto the splits.

    ``spec`` is the :class:`~bastion.data.spec.InputSpec`; without one it is derived from
    ``x`` and ``bounds`` (see :func:`default_spec`). ``bounds`` is then always the spec's
    :class:`~bastion.data.box.Box` (``lo, hi = data.bounds`` unpacks it)."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    bounds: Box | tuple[float, float] | None = None
    source: str = ""
    split: str = "all"
    spec: InputSpec | None = None
    rows: torch.Tensor | None = field(default=None, repr=False, compare=False)
    _sha: list[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        spec = self.spec or default_spec(self.x, self.bounds)
        object.__setattr__(self, "spec", spec)
        if self.rows is None:  # each sample's row in its source (file order)
            object.__setattr__(self, "rows", torch.arange(self.x.shape[0]))
        object.__setattr__(self, "bounds", spec.box())
        validate_arrays(self.x, self.y, len(self.class_names), spec, self.name)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def input_spec(self) -> InputSpec:
        return cast(InputSpec, self.spec)  # always set by __post_init__

    @property
    def box(self) -> Box:
        """The valid input region (per-feature bounds and frozen features): the spec's box,
        built once in ``__post_init__`` (``bounds`` is the same object)."""
        return cast(Box, self.bounds)

    @property
    def modality(self) -> str:
        return self.input_spec.modality

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample: (C, H, W) for images, (D,) for tabular rows."""
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, index: torch.Tensor | slice | list[int], split: str | None = None) -> Dataset:
        """A new dataset holding the rows selected by ``index``."""
        return Dataset(
            name=self.name,
            x=self.x[index],
            y=self.y[index],
            class_names=self.class_names,
            source=self.source,
            split=split or self.split,
            spec=self.spec,
            rows=cast(torch.Tensor, self.rows)[index],
        )

    def head(self, n: int) -> Dataset:
        return self.subset(slice(0, n))

    def sha256(self) -> str:
        """SHA-256 over the float32 pixels and int64 labels (cached)."""
        if not self._sha:
            h = hashlib.sha256()
            h.update(self.x.detach().cpu().contiguous().numpy().tobytes())
            h.update(self.y.detach().cpu().to(torch.int64).contiguous().numpy().tobytes())
            self._sha.append(h.hexdigest())
        return self._sha[0]

    def manifest(self) -> DatasetManifest:
        counts = torch.bincount(self.y, minlength=self.num_classes).tolist()
        return DatasetManifest(
            name=self.name,
            split=self.split,
            sha256=self.sha256(),
            n=len(self),
            shape=list(self.shape),
            num_classes=self.num_classes,
            class_counts={c: int(k) for c, k in zip(self.class_names, counts, strict=True)},
            input_spec=self.input_spec,
            source=self.source,
        )


@dataclass(frozen=True)
class DataBundle:
    """A train and a test split of the same dataset."""

    train: Dataset
    test: Dataset

    @property
    def name(self) -> str:
        return self.train.name


def validate_arrays(
    x: torch.Tensor, y: torch.Tensor, num_classes: int, spec: InputSpec, name: str
) -> None:
    """Raise :class:`DataError` naming the first problem with ``x``/``y``."""
    if list(x.shape[1:]) != list(spec.shape):
        raise DataError(
            f"{name}: samples have shape {tuple(x.shape[1:])} but the input spec says "
            f"{tuple(spec.shape)}"
        )
    if spec.modality == "image" and x.ndim != 4:
        raise DataError(f"{name}: images must have shape (N, C, H, W), got {tuple(x.shape)}")
    if y.ndim != 1:
        raise DataError(f"{name}: labels must be one-dimensional, got shape {tuple(y.shape)}")
    if x.shape[0] != y.shape[0]:
        raise DataError(
            f"{name}: {x.shape[0]} images but {y.shape[0]} labels (x/y length mismatch)"
        )
    if x.shape[0] == 0:
        raise DataError(f"{name}: the dataset is empty")
    if not torch.is_floating_point(x):
        raise DataError(f"{name}: images must be floating point, got {x.dtype}")
    if not torch.isfinite(x).all():
        bad = int((~torch.isfinite(x)).flatten(1).any(1).sum())
        raise DataError(f"{name}: {bad} sample(s) contain NaN or Inf values")
    lo, hi = spec.lower_tensor(), spec.upper_tensor()
    below, above = x < lo - 1e-6 * (1 + lo.abs()), x > hi + 1e-6 * (1 + hi.abs())
    if bool(below.any() or above.any()):
        bad = (below | above).reshape(x.shape[0], -1).any(0).nonzero().flatten()
        first = int(bad[0])
        what = (
            f"values span [{x.min():.4g}, {x.max():.4g}], outside [{float(lo):g}, {float(hi):g}]"
            if lo.numel() == 1
            else f"{len(bad)} feature(s) outside their bounds (first: feature {first}, "
            f"values [{x.reshape(x.shape[0], -1)[:, first].min():.4g}, "
            f"{x.reshape(x.shape[0], -1)[:, first].max():.4g}] vs "
            f"[{lo.flatten()[first]:.4g}, {hi.flatten()[first]:.4g}])"
        )
        raise DataError(
            f"{name}: {what}; give bounds that cover the data (--bounds FILE or "
            "--lower/--upper), or --clip-to-bounds to clip the test rows"
        )
    if y.dtype != torch.int64:
        raise DataError(f"{name}: labels must be int64, got {y.dtype}")
    if num_classes < 2:
        raise DataError(f"{name}: need at least 2 classes, got {num_classes}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(
            f"{name}: labels must lie in [0, {num_classes - 1}], found {int(y.min())}..{int(y.max())}"
        )
