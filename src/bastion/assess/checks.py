"""Checks made before any probe runs, so no verdict rests on a mismatch or a broken model.

- :func:`check_compatible`: the model accepts the data's samples, answers one row per
  sample, and has a class for every label in the data.
- :func:`check_clean_accuracy`: clean accuracy on the evaluation set must beat the
  majority-class rate (what a constant answer scores) by a margin, or the threat model's
  ``min_clean_accuracy`` when that is higher. A model at chance has nothing left to attack,
  so every robustness figure would flatter it; the assessment stops instead.
"""

from __future__ import annotations

import torch

from bastion.data.dataset import DataBundle
from bastion.errors import AssessmentError
from bastion.models.loaded import LoadedModel

CHANCE_MARGIN = 0.05


def check_compatible(model: LoadedModel, data: DataBundle) -> int:
    """Raise :class:`AssessmentError` naming the mismatch; return the model's class count."""
    test = data.test
    want = model.capabilities.input_shape
    if want is not None and [int(v) for v in want] != list(test.shape):
        raise AssessmentError(
            f"model {model.name} takes inputs of shape {tuple(want)} but the data's samples are "
            f"{tuple(test.shape)} ({test.input_spec.describe()}): check --data, --layout, --shape"
        )
    probe = test.x[:2]
    try:
        out = model.scores(probe)
    except (RuntimeError, ValueError, TypeError, IndexError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AssessmentError(
            f"model {model.name} cannot run on the data's samples of shape {tuple(test.shape)} "
            f"({test.input_spec.describe()}): {first}"
        ) from None
    if out.shape[0] != probe.shape[0]:
        raise AssessmentError(
            f"model {model.name} answered {out.shape[0]} rows for {probe.shape[0]} samples"
        )
    k = model.capabilities.num_classes or (int(out.shape[1]) if out.ndim == 2 else None)
    labels_max = int(max(int(data.train.y.max()), int(test.y.max())))
    if k is not None and labels_max >= k:
        raise AssessmentError(
            f"the data has labels up to {labels_max} but model {model.name} has {k} classes: "
            "check that the label column and the model belong together"
        )
    if out.ndim == 2 and not bool(torch.isfinite(out).all()):
        raise AssessmentError(f"model {model.name} answers NaN or Inf on the data's samples")
    return int(k if k is not None else test.num_classes)


def chance_rate(y: torch.Tensor) -> float:
    """The accuracy of always answering the most frequent label."""
    return float(torch.bincount(y).max()) / max(1, int(y.numel()))


def check_clean_accuracy(
    clean_accuracy: float, y: torch.Tensor, floor: float | None, model_name: str
) -> None:
    """Raise :class:`AssessmentError` when the model is too close to chance to assess."""
    chance = chance_rate(y)
    need = max(min(chance + CHANCE_MARGIN, 1.0), floor or 0.0)
    if clean_accuracy < need:
        raise AssessmentError(
            f"model {model_name} has clean accuracy {clean_accuracy:.1%} on the {y.numel()} "
            f"evaluation samples, below {need:.1%} (majority-class rate {chance:.1%}"
            f"{f', floor {floor:.1%}' if floor else ''}): robustness figures would be meaningless. "
            "Check the data's scale, layout and label column against how the model was trained"
        )
