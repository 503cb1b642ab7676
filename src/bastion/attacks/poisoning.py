"""Training-data poisoning: BadNets backdoors and label flipping.

- :func:`apply_trigger` stamps the BadNets trigger (Gu et al. 2017, "BadNets: Identifying
  Vulnerabilities in the Machine Learning Model Supply Chain"): a solid square patch of
  ``patch_size`` pixels at a corner of every channel.
- :func:`feature_trigger` is its tabular analogue for feature vectors (N, D): a few chosen
  features set to fixed values (by default the three features with the widest range, at
  their upper bound; :func:`default_trigger_features`).
- :func:`poison_dataset` picks ``rate · N`` training rows whose label is not the target,
  stamps the trigger on them (the patch for images, the feature trigger for other data) and
  relabels them as ``target``. A model trained on the result behaves normally on clean
  inputs and predicts ``target`` on triggered ones.
- :func:`flip_labels` replaces the labels of ``rate · N`` random rows by a different class
  drawn uniformly (random label noise, Biggio et al. 2011 "Support Vector Machines Under
  Adversarial Label Noise").

Both return a :class:`PoisonedData` holding the poisoned copy and the indices of the rows
that were changed: the ground truth that sanitization defences are scored against.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bastion.attacks.evasion import Bounds, Box, as_box, eval_mode
from bastion.data.dataset import Dataset
from bastion.errors import AttackError

LOCATIONS = ("bottom-right", "bottom-left", "top-right", "top-left")
TRIGGERS = ("patch", "features")
#: Features of the default tabular trigger: the ones with the widest range.
DEFAULT_TRIGGER_FEATURES = 3


@dataclass(frozen=True)
class PoisonedData:
    """A poisoned copy of a dataset and the rows that were poisoned.

    ``indices`` (int64, sorted) are row numbers into ``dataset``; ``original_labels`` are the
    labels those rows had before poisoning. ``target`` and ``patch_size`` are ``None`` and 0
    for label flipping (no single target, no trigger). ``trigger`` is ``"patch"`` (the image
    patch) or ``"features"`` (the tabular trigger; then ``features`` holds its flat feature
    indices, ``trigger_value`` their values and ``patch_size`` is 0), ``None`` for label
    flipping. Pass ``features``/``trigger_value`` to :func:`backdoor_success_rate` to test
    the same trigger."""

    dataset: Dataset
    indices: torch.Tensor
    target: int | None
    patch_size: int
    original_labels: torch.Tensor
    kind: str = "badnets"
    rate: float = 0.0
    trigger: str | None = None
    features: torch.Tensor | None = None
    trigger_value: torch.Tensor | None = None

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


def _data_box(data: Dataset) -> Bounds:
    """The dataset's valid region: its per-feature box where it has one, else its bounds."""
    box = getattr(data, "box", None)
    return box if isinstance(box, Box) else data.bounds


def trigger_for(data: Dataset, patch_size: int = 3) -> dict[str, Any]:
    """The BadNets trigger that fits ``data``'s modality, as keyword arguments for
    :func:`poison_dataset` and :func:`backdoor_success_rate`: a bright
    ``patch_size``×``patch_size`` square on images (at most half the image side); on tabular
    rows the widest-range features an attacker may change (:func:`default_trigger_features`)
    set to their upper bounds."""
    box = data.bounds
    if data.modality == "image":
        patch = min(patch_size, min(data.shape[-2:]) // 2)
        return {"trigger": "patch", "patch_size": patch, "value": float(box.hi.max())}
    k = min(DEFAULT_TRIGGER_FEATURES, int(((box.hi - box.lo).flatten() > 0).sum()))
    features = default_trigger_features(data.x, bounds=box, k=k)
    hi = box.hi.expand(data.shape).flatten()
    return {"trigger": "features", "features": features.tolist(), "value": hi[features]}


def describe_trigger(trigger: dict[str, Any]) -> str:
    """One phrase for a :func:`trigger_for` trigger (for findings' notes)."""
    if trigger["trigger"] == "patch":
        return f"{trigger['patch_size']}×{trigger['patch_size']} patch"
    return f"features {trigger['features']} set to their upper bounds"


def default_trigger_features(
    x: torch.Tensor, *, bounds: Bounds = (0.0, 1.0), k: int = DEFAULT_TRIGGER_FEATURES
) -> torch.Tensor:
    """The flat indices (int64, sorted) of the ``k`` features with the widest range: per
    feature ``hi − lo`` of a per-feature box, else (one range for every feature) the spread
    ``max − min`` observed in ``x`` (N, ...). A box's frozen features are never chosen (a
    trigger must be stampable at test time)."""
    box = as_box(bounds)
    shape = x.shape[1:]
    d = math.prod(shape)
    if box.lo.numel() > 1 or box.hi.numel() > 1:
        width = (box.hi - box.lo).to(x).expand(shape).reshape(d).clone()
    elif x.shape[0]:
        flat = x.flatten(1)
        width = flat.amax(0) - flat.amin(0)
    else:
        width = torch.zeros(d, dtype=x.dtype, device=x.device)
    allowed = torch.ones(d, dtype=torch.bool, device=x.device)
    if box.frozen is not None:
        allowed = ~box.frozen.to(x.device).expand(shape).reshape(d)
    if int(allowed.sum()) < k:
        raise AttackError(
            f"the trigger needs {k} features an attacker may change, got {int(allowed.sum())}"
        )
    width = width.masked_fill(~allowed, -float("inf"))
    return width.topk(k).indices.sort().values.to(torch.int64)


def feature_trigger(
    x: torch.Tensor,
    *,
    features: list[int] | torch.Tensor,
    value: torch.Tensor | float | None = None,
    bounds: Bounds = (0.0, 1.0),
) -> torch.Tensor:
    """Return a copy of ``x`` (N, ...) — typically feature vectors (N, D); a single sample of
    shape (D,) works too — with the flat features ``features`` of every sample set to
    ``value``: a tabular BadNets trigger (Gu et al. 2017's patch, one feature at a time).

    ``value`` is one number for every chosen feature or one per feature (same length as
    ``features``), and defaults to each chosen feature's upper bound in ``bounds`` (a pair
    or a per-feature :class:`Box`). It must lie within each feature's bounds."""
    single = x.ndim == 1
    batch = x[None] if single else x
    if batch.ndim < 2:
        raise AttackError(f"x must be a batch (N, ...) or one sample (D,), got {tuple(x.shape)}")
    shape = batch.shape[1:]
    d = math.prod(shape)
    idx = torch.as_tensor(features, dtype=torch.int64).flatten().to(x.device)
    if idx.numel() == 0:
        raise AttackError("the feature trigger needs at least one feature")
    if int(idx.min()) < 0 or int(idx.max()) >= d:
        raise AttackError(
            f"trigger features must be flat indices in [0, {d - 1}], got {idx.tolist()}"
        )
    if idx.unique().numel() != idx.numel():
        raise AttackError(f"trigger features must be distinct, got {idx.tolist()}")
    box = as_box(bounds)
    if box.frozen is not None and bool(box.frozen.to(x.device).expand(shape).reshape(d)[idx].any()):
        raise AttackError("trigger features must not be frozen: an attacker cannot set them")
    lo = box.lo.to(x).expand(shape).reshape(d)[idx]
    hi = box.hi.to(x).expand(shape).reshape(d)[idx]
    vals = hi if value is None else torch.as_tensor(value, dtype=x.dtype).to(x.device)
    if vals.numel() not in (1, idx.numel()):
        raise AttackError(
            f"value must be one number or one per trigger feature ({idx.numel()}), "
            f"got {vals.numel()}"
        )
    vals = vals.flatten().expand(idx.numel())
    tol = 1e-6 * (hi - lo).abs().clamp_min(1.0)
    if bool(((vals < lo - tol) | (vals > hi + tol)).any()):
        raise AttackError(
            f"trigger values {vals.tolist()} lie outside the bounds of their features "
            f"[{lo.tolist()}, {hi.tolist()}]"
        )
    out = batch.detach().clone().reshape(batch.shape[0], d)
    out[:, idx] = vals
    out = out.view_as(batch)
    return out[0] if single else out


def _scalar_bounds(bounds: Bounds) -> tuple[float, float]:
    """``bounds`` as one (low, high) pair of numbers, as the image patch needs."""
    box = as_box(bounds)
    if box.lo.numel() != 1 or box.hi.numel() != 1:
        raise AttackError("the image patch trigger needs one (low, high) pair of bounds")
    return float(box.lo), float(box.hi)


def _trigger_kind(trigger: str | None, x: torch.Tensor) -> str:
    kind = trigger if trigger is not None else ("patch" if x.ndim == 4 else "features")
    if kind not in TRIGGERS:
        raise AttackError(f"unknown trigger {trigger!r}: choose from {', '.join(TRIGGERS)}")
    return kind


def poison_dataset(
    data: Dataset,
    *,
    rate: float,
    target: int,
    patch_size: int = 3,
    value: float | torch.Tensor | None = None,
    location: str = "bottom-right",
    trigger: str | None = None,
    features: list[int] | torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> PoisonedData:
    """BadNets poisoning (Gu et al. 2017): stamp the trigger on ``round(rate · N)`` random rows
    whose label is not ``target`` and relabel them ``target``.

    ``trigger`` is ``"patch"`` (the image patch of :func:`apply_trigger`: ``patch_size``,
    ``location``) or ``"features"`` (:func:`feature_trigger` on the flat ``features``,
    default :func:`default_trigger_features`: the three widest-range features of the data's
    box, or of the data when its bounds are one pair); by default the patch for images
    (N, C, H, W) and the feature trigger for anything else, e.g. feature vectors (N, D).
    ``value`` defaults to the upper bound of the data's bounds (a bright patch; for the
    feature trigger each chosen feature's upper bound)."""
    _check_rate(rate)
    if not (isinstance(target, int) and 0 <= target < data.num_classes):
        raise AttackError(
            f"target class {target} is out of range: choose in [0, {data.num_classes - 1}]"
        )
    kind = _trigger_kind(trigger, data.x)
    bounds = _data_box(data)
    candidates = (data.y != target).nonzero().flatten()
    n = max(1, round(rate * len(data)))
    if n > len(candidates):
        raise AttackError(
            f"rate {rate} asks for {n} poisoned rows but only {len(candidates)} rows are not of "
            f"the target class {target}: lower the rate"
        )
    pick = torch.randperm(len(candidates), generator=generator)[:n]
    indices = candidates[pick].sort().values
    feats, trigger_value = None, None
    if kind == "features":
        if features is None:
            feats = default_trigger_features(data.x, bounds=bounds)
        else:
            feats = torch.as_tensor(features, dtype=torch.int64).flatten()
        stamped = feature_trigger(data.x[indices], features=feats, value=value, bounds=bounds)
        trigger_value = stamped.flatten(1)[:, feats.to(stamped.device)][0].clone()
    else:
        lo, hi = _scalar_bounds(bounds)
        stamped = apply_trigger(
            data.x[indices],
            patch_size=patch_size,
            value=hi if value is None else float(value),
            location=location,
            bounds=(lo, hi),
        )
    x = data.x.clone()
    y = data.y.clone()
    x[indices] = stamped
    y[indices] = target
    poisoned = _replace(data, x, y, f"badnets(rate={rate}, target={target})")
    return PoisonedData(
        dataset=poisoned,
        indices=indices,
        target=target,
        patch_size=patch_size if kind == "patch" else 0,
        original_labels=data.y[indices].clone(),
        kind="badnets",
        rate=float(rate),
        trigger=kind,
        features=feats,
        trigger_value=trigger_value,
    )


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
        dataset=poisoned,
        indices=indices,
        target=None,
        patch_size=0,
        original_labels=data.y[indices].clone(),
        kind="label_flip",
        rate=float(rate),
    )


def _replace(data: Dataset, x: torch.Tensor, y: torch.Tensor, how: str) -> Dataset:
    """A copy of ``data`` with new rows (every other field kept; the hash cache reset)."""
    source = f"{data.source} + {how}" if data.source else how
    return dataclasses.replace(data, x=x, y=y, source=source, _sha=[])


@torch.no_grad()
def backdoor_success_rate(
    model: nn.Module,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    target: int,
    patch_size: int = 3,
    value: float | torch.Tensor | None = None,
    location: str = "bottom-right",
    bounds: Bounds = (0.0, 1.0),
    trigger: str | None = None,
    features: list[int] | torch.Tensor | None = None,
    batch_size: int = 1024,
) -> float:
    """Share of triggered test inputs whose true class is not ``target`` that ``model``
    classifies as ``target`` (the attack success rate of Gu et al. 2017).

    The trigger is the image patch (``patch_size``, ``value``, ``location``) for images and
    the feature trigger (``features``, ``value``; :func:`feature_trigger`) for other inputs,
    or as ``trigger`` says. ``value`` defaults to the upper bound of ``bounds`` (as in
    :func:`poison_dataset`; for the feature trigger, each chosen feature's). For the feature
    trigger pass the poisoning's :attr:`PoisonedData.features` and
    :attr:`PoisonedData.trigger_value`; without ``features`` the default ones are chosen
    from ``bounds`` (and from ``x_test``, for one pair of bounds)."""
    if x_test.shape[0] != y_test.shape[0]:
        raise AttackError(f"x_test has {x_test.shape[0]} samples but y_test has {y_test.shape[0]}")
    kind = _trigger_kind(trigger, x_test)
    keep = y_test != target
    if not keep.any():
        raise AttackError(f"every test label is the target class {target}: nothing to trigger")
    if kind == "patch":
        lo, hi = _scalar_bounds(bounds)
        x = apply_trigger(
            x_test[keep],
            patch_size=patch_size,
            value=hi if value is None else float(value),
            location=location,
            bounds=(lo, hi),
        )
    else:
        if features is None:
            features = default_trigger_features(x_test, bounds=bounds)
        x = feature_trigger(x_test[keep], features=features, value=value, bounds=bounds)
    hits = 0
    with eval_mode(model):
        for i in range(0, len(x), batch_size):
            hits += int((model(x[i : i + batch_size]).argmax(1) == target).sum())
    return hits / len(x)
