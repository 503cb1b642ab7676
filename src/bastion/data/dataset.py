"""The in-memory dataset record and its provenance manifest."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch
from pydantic import BaseModel

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
    bounds: tuple[float, float]
    source: str


@dataclass(frozen=True)
class Dataset:
    """Images ``x`` of shape (N, C, H, W), float32 within ``bounds``; labels ``y`` int64."""

    name: str
    x: torch.Tensor
    y: torch.Tensor
    class_names: list[str]
    bounds: tuple[float, float] = (0.0, 1.0)
    source: str = ""
    split: str = "all"
    _sha: list[str] = field(default_factory=list, repr=False, compare=False)

    def __post_init__(self) -> None:
        validate_arrays(self.x, self.y, len(self.class_names), self.bounds, self.name)

    def __len__(self) -> int:
        return int(self.x.shape[0])

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample, (C, H, W)."""
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
            bounds=self.bounds,
            source=self.source,
            split=split or self.split,
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
            bounds=self.bounds,
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
    x: torch.Tensor, y: torch.Tensor, num_classes: int, bounds: tuple[float, float], name: str
) -> None:
    """Raise :class:`DataError` naming the first problem with ``x``/``y``."""
    if x.ndim != 4:
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
        raise DataError(f"{name}: {bad} image(s) contain NaN or Inf values")
    lo, hi = bounds
    if x.min() < lo - 1e-6 or x.max() > hi + 1e-6:
        raise DataError(
            f"{name}: pixel values span [{x.min():.3g}, {x.max():.3g}], outside the bounds [{lo}, {hi}]"
        )
    if y.dtype != torch.int64:
        raise DataError(f"{name}: labels must be int64, got {y.dtype}")
    if num_classes < 2:
        raise DataError(f"{name}: need at least 2 classes, got {num_classes}")
    if y.min() < 0 or y.max() >= num_classes:
        raise DataError(
            f"{name}: labels must lie in [0, {num_classes - 1}], found {int(y.min())}..{int(y.max())}"
        )
