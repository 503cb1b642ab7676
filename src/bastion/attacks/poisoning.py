"""Training-data poisoning: BadNets backdoors and label flipping.

- :func:`apply_trigger` stamps the BadNets trigger (Gu et al. 2017, "BadNets: Identifying
  Vulnerabilities in the Machine Learning Model Supply Chain"): a solid square patch of
  ``patch_size`` pixels at a corner of every channel.
- :func:`poison_dataset` picks ``rate · N`` training rows whose label is not the target,
  stamps the trigger on them and relabels them as ``target``. A model trained on the result
  behaves normally on clean inputs and predicts ``target`` on triggered ones.
- :func:`flip_labels` replaces the labels of ``rate · N`` random rows by a different class
  drawn uniformly (random label noise, Biggio et al. 2011 "Support Vector Machines Under
  Adversarial Label Noise").

Both return a :class:`PoisonedData` holding the poisoned copy and the indices of the rows
that were changed: the ground truth that sanitization defences are scored against.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from bastion.attacks.evasion import Bounds, eval_mode
from bastion.data.dataset import Dataset
from bastion.errors import AttackError

LOCATIONS = ("bottom-right", "bottom-left", "top-right", "top-left")


@dataclass(frozen=True)
class PoisonedData:
    """A poisoned copy of a dataset and the rows that were poisoned.

    ``indices`` (int64, sorted) are row numbers into ``dataset``; ``original_labels`` are the
    labels those rows had before poisoning. ``target`` and ``patch_size`` are ``None`` and 0
    for label flipping (no single target, no trigger)."""

    dataset: Dataset
    indices: torch.Tensor
    target: int | None
    patch_size: int
    original_labels: torch.Tensor
    kind: str = "badnets"
    rate: float = 0.0

    @property
    def mask(self) -> torch.Tensor:
        """Boolean mask over the rows of ``dataset``, True where poisoned."""
        m = torch.zeros(len(self.dataset), dtype=torch.bool)
        m[self.indices] = True
        return m


def _check_rate(rate: float) -> None:
    if not (isinstance(rate, (int, float)) and 0.0 < float(rate) < 1.0):
        raise AttackError(f"poisoning rate must be in (0, 1), got {rate}: e.g. rate=0.05 for 5%")


def apply_trigger(
    x: torch.Tensor,
    *,
    patch_size: int = 3,
    value: float = 1.0,
    location: str = "bottom-right",
    bounds: Bounds = (0.0, 1.0),
) -> torch.Tensor:
    """Return a copy of ``x`` ((N, C, H, W) or (C, H, W)) with a ``patch_size``×``patch_size``
    square of ``value`` at ``location`` in every channel (the BadNets trigger, Gu et al. 2017).

    ``value`` must lie within ``bounds`` so the triggered images stay valid inputs."""
    if location not in LOCATIONS:
        raise AttackError(
            f"unknown trigger location {location!r}: choose from {', '.join(LOCATIONS)}"
        )
    if x.ndim not in (3, 4):
        raise AttackError(f"x must have shape (N, C, H, W) or (C, H, W), got {tuple(x.shape)}")
    height, width = x.shape[-2:]
    if not (isinstance(patch_size, int) and 1 <= patch_size <= min(height, width)):
        raise AttackError(
            f"patch_size must be an integer in [1, {min(height, width)}] for {height}×{width} "
            f"images, got {patch_size}"
        )
    lo, hi = bounds
    if not lo <= value <= hi:
        raise AttackError(f"trigger value {value} lies outside the input bounds [{lo}, {hi}]")
    rows = (
        slice(height - patch_size, height)
        if location.startswith("bottom")
        else slice(0, patch_size)
    )
    cols = slice(width - patch_size, width) if location.endswith("right") else slice(0, patch_size)
    out = x.detach().clone()
    out[..., rows, cols] = value
    return out


def poison_dataset(
    data: Dataset,
    *,
    rate: float,
    target: int,
    patch_size: int = 3,
    value: float | None = None,
    location: str = "bottom-right",
    generator: torch.Generator | None = None,
) -> PoisonedData:
    """BadNets poisoning (Gu et al. 2017): stamp the trigger on ``round(rate · N)`` random rows
    whose label is not ``target`` and relabel them ``target``.

    ``value`` defaults to the upper bound of ``data.bounds`` (a bright patch)."""
    _check_rate(rate)
    if not (isinstance(target, int) and 0 <= target < data.num_classes):
        raise AttackError(
            f"target class {target} is out of range: choose in [0, {data.num_classes - 1}]"
        )
    candidates = (data.y != target).nonzero().flatten()
    n = max(1, round(rate * len(data)))
    if n > len(candidates):
        raise AttackError(
            f"rate {rate} asks for {n} poisoned rows but only {len(candidates)} rows are not of "
            f"the target class {target}: lower the rate"
        )
    pick = torch.randperm(len(candidates), generator=generator)[:n]
    indices = candidates[pick].sort().values
    value = data.bounds[1] if value is None else value
    x = data.x.clone()
    y = data.y.clone()
    x[indices] = apply_trigger(
        data.x[indices], patch_size=patch_size, value=value, location=location, bounds=data.bounds
    )
    y[indices] = target
    poisoned = _replace(data, x, y, f"badnets(rate={rate}, target={target})")
    return PoisonedData(
        dataset=poisoned, indices=indices, target=target, patch_size=patch_size,
        original_labels=data.y[indices].clone(), kind="badnets", rate=float(rate),
    )  # fmt: skip


def flip_labels(
    data: Dataset, *, rate: float, generator: torch.Generator | None = None
) -> PoisonedData:
    """Give ``round(rate · N)`` random rows a different label, drawn uniformly among the other
    classes (random label flipping)."""
    _check_rate(rate)
    n = max(1, round(rate * len(data)))
    indices = torch.randperm(len(data), generator=generator)[:n].sort().values
    # an offset in [1, K-1] added modulo K gives a uniformly random *other* class
    offset = torch.randint(1, data.num_classes, (n,), generator=generator)
    y = data.y.clone()
    y[indices] = (data.y[indices] + offset) % data.num_classes
    poisoned = _replace(data, data.x.clone(), y, f"label-flip(rate={rate})")
    return PoisonedData(
        dataset=poisoned, indices=indices, target=None, patch_size=0,
        original_labels=data.y[indices].clone(), kind="label_flip", rate=float(rate),
    )  # fmt: skip


def _replace(data: Dataset, x: torch.Tensor, y: torch.Tensor, how: str) -> Dataset:
    source = f"{data.source} + {how}" if data.source else how
    return Dataset(
        name=data.name, x=x, y=y, class_names=data.class_names, bounds=data.bounds,
        source=source, split=data.split,
    )  # fmt: skip


@torch.no_grad()
def backdoor_success_rate(
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    target: int,
    patch_size: int,
    value: float = 1.0,
    location: str = "bottom-right",
    bounds: Bounds = (0.0, 1.0),
    batch_size: int = 1024,
) -> float:
    """Share of triggered test inputs whose true class is not ``target`` that ``model``
    classifies as ``target`` (the attack success rate of Gu et al. 2017)."""
    if x_test.shape[0] != y_test.shape[0]:
        raise AttackError(f"x_test has {x_test.shape[0]} samples but y_test has {y_test.shape[0]}")
    keep = y_test != target
    if not keep.any():
        raise AttackError(f"every test label is the target class {target}: nothing to trigger")
    x = apply_trigger(
        x_test[keep], patch_size=patch_size, value=value, location=location, bounds=bounds
    )
    hits = 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            hits += int((model(x[i : i + batch_size]).argmax(1) == target).sum())
    return hits / len(x)
