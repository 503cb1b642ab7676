"""The detector contract (scikit-learn habit, as in Alibi Detect).

A detector stores its parameters unchanged in ``__init__``; ``fit(x, y=None)`` learns from
clean data and returns ``self``; ``score(x)`` returns one float per sample, higher = more
anomalous; ``calibrate(x_heldout, target_fpr)`` sets ``threshold_`` to the
(1 − target_fpr) quantile of the held-out clean scores; ``predict(x)`` is
``score(x) > threshold_``. Learned attributes end in ``_``; using a detector before ``fit``
raises :class:`~bastion.errors.NotFittedError`.

For saving without pickle, ``state()`` returns JSON-able parameters and scalars plus a
dict of tensors (written with safetensors by the guard), and ``from_state`` rebuilds it.
"""

from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch

from bastion.errors import ConfigError, NotFittedError
from bastion.guard.tap import ModelTap, Tap, TapOutputs

log = logging.getLogger(__name__)


def conformal_threshold(scores: torch.Tensor, target_fpr: float) -> float:
    """The threshold that a fresh clean score exceeds with probability at most
    ``target_fpr`` (split-conformal rule, Vovk et al. 2005): the k-th smallest of the n
    held-out scores with k = ⌈(n + 1)(1 − α)⌉, whose expected exceedance rate is
    1 − k/(n + 1) ≤ α. (A plain linear-interpolated quantile overshoots α by about
    1/(n + 1).) With fewer than 1/α − 1 scores k > n: the largest score is used and a
    warning logged, as the target cannot be certified."""
    if not 0.0 < target_fpr < 1.0:
        raise ConfigError(f"target_fpr must be in (0, 1), got {target_fpr}")
    s = scores.detach().double().flatten()
    s = s[torch.isfinite(s)]
    n = s.numel()
    if n == 0:
        raise ConfigError("calibration needs at least one held-out clean sample")
    k = math.ceil((n + 1) * (1.0 - target_fpr))
    if k > n:
        log.warning(
            "%d calibration scores cannot certify an FPR of %g: need at least %d",
            n,
            target_fpr,
            math.ceil(1 / target_fpr) - 1,
        )
        k = n
    return float(torch.sort(s).values[k - 1])


class Detector(ABC):
    """Base class of every input detector. Subclasses set ``name`` and ``needs_model``."""

    name: ClassVar[str] = "detector"
    needs_model: ClassVar[bool] = False
    _fit_marker: ClassVar[str] = "threshold_"  # overridden: an attribute set by fit

    # -- contract -------------------------------------------------------------------------
    @abstractmethod
    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> Detector: ...

    @abstractmethod
    def _score(self, x: torch.Tensor, outputs: TapOutputs | None) -> torch.Tensor: ...

    def score(self, x: torch.Tensor, outputs: TapOutputs | None = None) -> torch.Tensor:
        """Anomaly score per sample (shape (N,), float32), higher = more anomalous.
        ``outputs`` may carry the model's logits/features for ``x`` to avoid recomputing."""
        self._check_fitted("fit")
        with torch.no_grad():
            return self._score(x, outputs).float().flatten()

    def calibrate(self, x_heldout: torch.Tensor, target_fpr: float = 0.01) -> Detector:
        """Set ``threshold_`` so that about ``target_fpr`` of clean inputs score above it."""
        self._check_fitted("fit")
        self.threshold_ = conformal_threshold(self.score(x_heldout), target_fpr)
        self.target_fpr_ = float(target_fpr)
        return self

    def predict(self, x: torch.Tensor, outputs: TapOutputs | None = None) -> torch.Tensor:
        """Boolean per sample: the score is above the calibrated threshold."""
        threshold = self.threshold()
        return self.score(x, outputs) > threshold

    def threshold(self) -> float:
        self._check_fitted("fit")
        if not hasattr(self, "threshold_"):
            raise NotFittedError(self, "calibrate")
        return self.threshold_

    # -- helpers --------------------------------------------------------------------------
    def is_fitted(self) -> bool:
        return hasattr(self, self._fit_marker)

    def _check_fitted(self, method: str) -> None:
        if not self.is_fitted():
            raise NotFittedError(self, method)

    def _resolve_tap(self, model: Tap | torch.nn.Module | None) -> Tap:
        if model is None:
            raise ConfigError(f"{type(self).__name__} needs the model: pass model=<nn.Module>")
        return ModelTap(model) if isinstance(model, torch.nn.Module) else model

    # -- persistence ----------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The JSON-able constructor parameters (the model, if any, is not one of them)."""
        return {k: v for k, v in vars(self).items() if not k.endswith("_") and k != "model"}

    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able learned scalars, learned tensors) for saving."""
        self._check_fitted("fit")
        scalars: dict[str, Any] = {}
        tensors: dict[str, torch.Tensor] = {}
        for key, value in vars(self).items():
            if not key.endswith("_") or key.startswith("_"):
                continue
            if isinstance(value, torch.Tensor):
                tensors[key] = value.detach().cpu().contiguous()
            elif isinstance(value, torch.nn.Module):
                for sub, t in value.state_dict().items():
                    tensors[f"{key}.{sub}"] = t.detach().cpu().contiguous()
                scalars[key] = "module"
            elif isinstance(value, float) and not math.isfinite(value):
                scalars[key] = str(value)
            else:
                scalars[key] = value
        return scalars, tensors

    def load_state(self, scalars: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Detector:
        """Restore what :meth:`state` returned (the inverse, used by ``Guard.load``)."""
        for key, value in scalars.items():
            if value == "module":
                module = self._build_module(key, scalars)
                prefix = f"{key}."
                module.load_state_dict(
                    {k[len(prefix) :]: t for k, t in tensors.items() if k.startswith(prefix)}
                )
                module.eval()
                setattr(self, key, module)
            elif isinstance(value, str) and value in {"inf", "-inf", "nan"}:
                setattr(self, key, float(value))
            else:
                setattr(self, key, value)
        for key, t in tensors.items():
            if "." not in key:
                setattr(self, key, t)
        return self

    def _build_module(self, key: str, scalars: dict[str, Any]) -> torch.nn.Module:
        raise NotImplementedError(f"{type(self).__name__} saves no module {key!r}")
