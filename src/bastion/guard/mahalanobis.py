"""Mahalanobis-distance detector over the model's hidden layers (Lee, Lee, Lee & Shin 2018,
"A Simple Unified Framework for Detecting Out-of-Distribution Samples and Adversarial
Attacks", NeurIPS).

For each *view* of a layer, ``fit`` estimates class-conditional Gaussians with one covariance
shared by all classes (tied): μ_c = mean of the class's features, Σ = 1/N Σ_i (f_i − μ_{y_i})
(f_i − μ_{y_i})ᵀ, shrunk towards a scaled identity; the view's score is
min_c (f − μ_c)ᵀ Σ⁻¹ (f − μ_c). With ``layers="penultimate"`` the only view is the input of
the last linear layer (the method of the paper's §2). With ``layers="all"`` (the paper's
feature ensemble, §2.3) every hidden conv/linear layer adds views; for a conv layer
``conv_views`` picks among the channel means (``mean``, as in the paper) and a coarse spatial
grid of at most ``max_dim`` values (``grid``: small perturbations live in the low layers),
of the raw maps or of the rectified ones (``rmean``, ``rgrid``: as after the ReLU that
follows the conv). Each view's distance is scaled on a held-out share of the fit data,
(d − median) / (q_tail − median), and the detector's score is the largest scaled distance
(the paper weights layers with a regression fitted on attack samples; without attack data
the maximum of tail-scaled scores is a parameter-free ensemble).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bastion.errors import ConfigError
from bastion.guard.base import Detector
from bastion.guard.tap import ModelTap, TapOutputs

PENULTIMATE = "penultimate"


def _grid_side(channels: int, side: int, max_dim: int) -> int:
    s = side
    while s > 1 and channels * s * s > max_dim:
        s -= 1
    return s


def view_features(outputs: TapOutputs, view: list[Any]) -> torch.Tensor:
    """The feature vector (N, D) of one view ``[layer, kind, side]`` of a tapped batch."""
    layer, kind, side = view
    h = outputs.features if layer == PENULTIMATE else outputs.hidden[layer]
    if kind.startswith("r"):
        h = h.clamp_min(0)  # rectified maps, as after the ReLU that follows a conv
        kind = kind[1:]
    if kind == "mean":
        return h.flatten(2).mean(2)
    if kind == "grid":
        if h.ndim == 4:
            h = F.adaptive_avg_pool2d(h, int(side))
        elif h.ndim == 3:
            h = F.adaptive_avg_pool1d(h, int(side))
    return h.flatten(1)


class MahalanobisDetector(Detector):
    """Class-conditional, tied-covariance Mahalanobis distance on hidden features (Lee et al.
    2018). ``model`` is an ``nn.Module`` or a :class:`ModelTap` (wrapped into one at fit)."""

    name = "mahalanobis"
    needs_model = True
    _fit_marker = "views_"

    def __init__(
        self,
        model: nn.Module | ModelTap | None = None,
        *,
        layers: str = "all",
        shrinkage: float = 0.001,
        max_dim: int = 512,
        holdout: float = 0.2,
        conv_views: tuple[str, ...] = ("mean", "grid", "rmean", "rgrid"),
        tail: float = 0.99,
        seed: int = 0,
    ) -> None:
        self.model = model
        self.layers = layers
        self.shrinkage = shrinkage
        self.max_dim = max_dim
        self.holdout = holdout
        self.conv_views = conv_views
        self.tail = tail
        self.seed = seed

    def _views(self, probe: TapOutputs) -> list[list[Any]]:
        views: list[list[Any]] = []
        if self.layers == "all":
            for name, h in probe.hidden.items():
                if h.ndim >= 3:
                    side = _grid_side(h.shape[1], h.shape[-1], self.max_dim)
                    views += [
                        [name, kind, side if kind.endswith("grid") else 0]
                        for kind in self.conv_views
                    ]
                elif h.shape[1] <= self.max_dim:
                    views.append([name, "flat", 0])
        views.append([PENULTIMATE, "flat", 0])
        return views

    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> MahalanobisDetector:
        if self.layers not in ("all", PENULTIMATE):
            raise ConfigError(f"layers must be 'all' or 'penultimate', got {self.layers!r}")
        if not 0.0 <= self.shrinkage <= 1.0:
            raise ConfigError(f"shrinkage must be in [0, 1], got {self.shrinkage}")
        if not 0.0 < self.holdout < 1.0:
            raise ConfigError(f"holdout must be in (0, 1), got {self.holdout}")
        tap = self._resolve_tap(self.model)
        self.model = tap
        views = self._views(tap(x[:2]))
        feats: list[list[torch.Tensor]] = [[] for _ in views]
        preds = []
        for i in range(0, len(x), 256):
            out = tap(x[i : i + 256])
            preds.append(out.predictions)
            for j, v in enumerate(views):
                feats[j].append(view_features(out, v))
        y = torch.cat(preds) if y is None else y
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_hold = max(2, int(round(self.holdout * len(x))))
        fit_idx, hold_idx = perm[n_hold:], perm[:n_hold]
        self.views_, self.whiten_, self.centers_ = views, [], []
        locs, scales = [], []
        for j in range(len(views)):
            f = torch.cat(feats[j]).double()
            w, centers = self._gaussian(f[fit_idx], y[fit_idx])
            self.whiten_.append(w)
            self.centers_.append(centers)
            held = self._distance(f[hold_idx].float(), j)
            loc = held.median()
            locs.append(loc)
            scales.append((torch.quantile(held, self.tail) - loc).clamp_min(1e-6))
        self.loc_ = torch.stack(locs).float()
        self.scale_ = torch.stack(scales).float()
        return self

    def _gaussian(self, f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classes = torch.unique(y)
        means = torch.stack([f[y == c].mean(0) for c in classes])
        centered = f - means[torch.searchsorted(classes, y)]
        cov = centered.T @ centered / len(f)
        d = cov.shape[0]
        scale = torch.trace(cov) / d
        cov = (1 - self.shrinkage) * cov + self.shrinkage * scale * torch.eye(d, dtype=cov.dtype)
        evals, evecs = torch.linalg.eigh(cov)
        evals = evals.clamp_min(float(evals.max()) * 1e-10 + 1e-30)
        whiten = evecs / evals.sqrt()  # Σ⁻¹ = W Wᵀ
        return whiten.float(), (means @ whiten).float()

    def _distance(self, f: torch.Tensor, j: int) -> torch.Tensor:
        z = f @ self.whiten_[j]
        return torch.cdist(z, self.centers_[j]).pow(2).min(1).values

    def view_scores(self, x: torch.Tensor, outputs: TapOutputs | None = None) -> torch.Tensor:
        """Standardised score of every view, shape (N, n_views)."""
        self._check_fitted("fit")
        out = outputs if outputs is not None else self._resolve_tap(self.model)(x)
        with torch.no_grad():
            d = torch.stack(
                [self._distance(view_features(out, v), j) for j, v in enumerate(self.views_)], 1
            )
        return (d - self.loc_) / self.scale_

    def _score(self, x: torch.Tensor, outputs: TapOutputs | None) -> torch.Tensor:
        return self.view_scores(x, outputs).max(1).values

    # persistence: lists of tensors are stored one tensor per view
    def state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        self._check_fitted("fit")
        scalars = {"views_": self.views_}
        for key in ("threshold_", "target_fpr_"):
            if hasattr(self, key):
                scalars[key] = getattr(self, key)
        tensors = {"loc_": self.loc_, "scale_": self.scale_}
        for j in range(len(self.views_)):
            tensors[f"whiten_{j}"] = self.whiten_[j].contiguous()
            tensors[f"centers_{j}"] = self.centers_[j].contiguous()
        return scalars, tensors

    def load_state(
        self, scalars: dict[str, Any], tensors: dict[str, torch.Tensor]
    ) -> MahalanobisDetector:
        for key, value in scalars.items():
            setattr(self, key, value)
        self.loc_, self.scale_ = tensors["loc_"], tensors["scale_"]
        self.whiten_ = [tensors[f"whiten_{j}"] for j in range(len(self.views_))]
        self.centers_ = [tensors[f"centers_{j}"] for j in range(len(self.views_))]
        return self
