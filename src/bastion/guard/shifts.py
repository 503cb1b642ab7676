"""Shifted inputs for the guard's evaluation, chosen by modality: images get noise, blur and
another dataset; tabular rows get feature-wise noise scaled to each range, feature scaling,
missing-value corruption and out-of-distribution rows (another bundled table with the same
feature count, else rows drawn uniformly within the box). Every shifted row stays in the
input spec's box with integer features whole."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from bastion.data.dataset import Dataset
from bastion.data.spec import InputSpec
from bastion.errors import BastionError, ConfigError

log = logging.getLogger(__name__)

log = logging.getLogger(__name__)

IMAGE_SHIFTS = ("noise", "blur", "ood")
TABULAR_SHIFTS = ("noise", "scale", "missing-lower", "missing-mean", "ood")
_IMAGE_ONLY = {"blur"}
_TABULAR_ONLY = {"scale", "missing-lower", "missing-mean", "uniform"}


def default_shifts(modality: str) -> tuple[str, ...]:
    """The shifts that make sense for ``modality``."""
    return IMAGE_SHIFTS if modality == "image" else TABULAR_SHIFTS


def _into_box(t: torch.Tensor, spec: InputSpec) -> torch.Tensor:
    """``t`` clamped into the spec's bounds, integer features rounded."""
    lo, hi = spec.lower_tensor().to(t), spec.upper_tensor().to(t)
    out = torch.maximum(torch.minimum(t, hi), lo)
    mask = spec.integer_mask()
    if mask is not None:
        out = torch.where(mask, out.round(), out)
    return out


def check_shift(kind: str, modality: str) -> None:
    known = set(IMAGE_SHIFTS) | set(TABULAR_SHIFTS) | {"uniform"}
    if kind not in known:
        raise ConfigError(
            f"unknown shift {kind!r}: use one of {', '.join(default_shifts(modality))}"
        )
    if modality != "image" and kind in _IMAGE_ONLY:
        raise ConfigError(
            f"the {kind!r} shift is an image transform; for {modality} inputs use one of "
            f"{', '.join(TABULAR_SHIFTS)}, uniform"
        )
    if modality == "image" and kind in _TABULAR_ONLY:
        raise ConfigError(
            f"the {kind!r} shift is for feature vectors; for images use one of "
            f"{', '.join(IMAGE_SHIFTS)}"
        )


def shifted_inputs(
    kind: str,
    x: torch.Tensor,
    *,
    spec: InputSpec,
    generator: torch.Generator,
    ood: torch.Tensor | None = None,
    noise_std: float = 0.1,
    missing: float = 0.25,
) -> tuple[torch.Tensor, str]:
    """Shifted copies of ``x`` (see the module docstring for each ``kind``), inside the
    spec's box, and a description. Image kinds: ``noise``, ``blur``, ``ood``; tabular
    kinds: ``noise``, ``scale``, ``missing-lower``, ``missing-mean``, ``ood`` (``ood``: the
    rows of another dataset with the same feature count), ``uniform``."""
    modality = spec.modality
    check_shift(kind, modality)
    lo, hi = spec.lower_tensor().to(x), spec.upper_tensor().to(x)
    if kind == "noise":
        noisy = x + noise_std * (hi - lo) * torch.randn(x.shape, generator=generator)
        what = "the range" if modality == "image" and lo.numel() == 1 else "each feature's range"
        return _into_box(noisy, spec), f"Gaussian noise, σ = {noise_std:g} of {what}"
    if kind == "blur":
        padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
        return F.avg_pool2d(padded, 3, 1), "3×3 box blur"
    if kind == "ood" and modality == "image":
        if ood is None:
            raise BastionError("no out-of-distribution data given")
        other = ood
        if other.shape[1] != x.shape[1]:
            other = other.mean(1, keepdim=True).expand(-1, x.shape[1], -1, -1)
        other = F.interpolate(other, size=tuple(x.shape[2:]), mode="area")
        return _into_box(other, spec), "another dataset resized to the input shape"
    if kind == "scale":
        signs = torch.randint(0, 2, x.shape[1:], generator=generator).to(x) * 2 - 1
        factor = torch.pow(2.0, signs)
        return _into_box(lo + (x - lo) * factor, spec), (
            "each feature's offset from its lower bound halved or doubled (one random choice "
            "per feature, as a unit mix-up), put back into the box"
        )
    if kind in ("missing-lower", "missing-mean"):
        mask = torch.rand(x.shape, generator=generator) < missing
        if kind == "missing-lower":
            fill, how = lo.expand_as(x), "their lower bound (a missing value sent as the minimum)"
        else:
            fill, how = x.mean(0, keepdim=True).expand_as(x), "their mean (mean imputation)"
        return _into_box(torch.where(mask, fill, x), spec), (
            f"{missing:.0%} of each row's features set to {how}"
        )
    if kind == "ood":
        if ood is None:
            raise BastionError("no out-of-distribution rows given")
        if ood.shape[1:] != x.shape[1:]:
            raise ConfigError(
                f"out-of-distribution rows have {tuple(ood.shape[1:])} features, the model "
                f"takes {tuple(x.shape[1:])}"
            )
        return _into_box(ood.to(x), spec), "another dataset's rows, put back into the box"
    if kind == "uniform":
        u = torch.rand(x.shape, generator=generator).to(x)
        return _into_box(lo + u * (hi - lo), spec), "rows drawn uniformly within the box"
    raise ConfigError(f"unknown shift {kind!r}")


def _bundled_tables() -> list[tuple[str, Any]]:
    from sklearn import datasets

    return [
        ("iris", datasets.load_iris),
        ("wine", datasets.load_wine),
        ("breast-cancer", datasets.load_breast_cancer),
        ("diabetes", datasets.load_diabetes),
        ("digits", datasets.load_digits),
    ]


def _same_rows(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether ``a`` holds the rows of ``b`` (up to rounding: most of ``a``'s first rows are
    within 1 % of a row of ``b`` in every feature), i.e. the same data."""
    rows = a[:20]
    hits = sum(bool(np.isclose(b, r, rtol=1e-2, atol=1e-6).all(1).any()) for r in rows)
    return hits >= 0.5 * len(rows)


def default_ood(data: Dataset | str, n: int) -> tuple[torch.Tensor | None, str]:
    """Another dataset for the ``ood`` shift. Images: Fashion-MNIST for a digits model,
    digits for any other. Tabular rows: the first bundled scikit-learn table (iris, wine,
    breast cancer, diabetes, digits) with the same feature count that is not the test data
    itself. None when there is none (tabular rows then fall back to ``uniform``)."""
    name = data if isinstance(data, str) else data.name
    modality = "image" if isinstance(data, str) else data.modality
    if modality == "image":
        from bastion.data import load_dataset

        other = "digits" if name == "fashion-mnist" else "fashion-mnist"
        try:
            return load_dataset(other).test.x[:n], other
        except BastionError as exc:
            log.warning("no out-of-distribution set (%s): skipping the ood shift", exc)
            return None, other
    assert isinstance(data, Dataset)
    d = int(data.x[0].numel())
    mine = data.x.flatten(1).double().numpy()
    for table, loader in _bundled_tables():
        rows = np.asarray(loader().data, dtype=np.float64)
        if rows.shape[1] != d or _same_rows(mine, rows):
            continue
        gen = np.random.default_rng(0)
        pick = gen.permutation(len(rows))[:n]
        return torch.tensor(rows[pick], dtype=torch.float32).reshape(-1, *data.shape), table
    return None, ""
