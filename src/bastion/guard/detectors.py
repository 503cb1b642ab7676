"""Input detectors: Mahalanobis on penultimate features, autoencoder reconstruction error,
a per-dimension z-score baseline, and feature squeezing.

Each follows the :class:`~bastion.guard.base.Detector` contract: parameters in ``__init__``,
``fit(x, y)`` on clean data, ``score(x)`` higher = more anomalous, ``calibrate(x, fpr)``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bastion.errors import ConfigError
from bastion.guard.base import Detector
from bastion.guard.config import GuardConfig
from bastion.guard.mahalanobis import MahalanobisDetector
from bastion.guard.tap import ModelTap, TapOutputs
from bastion.progress import task

Bounds = tuple[float, float]


class _AutoEncoder(nn.Module):
    def __init__(self, dim: int, hidden: int, bottleneck: int, bounds: Bounds) -> None:
        super().__init__()
        self.lo, self.hi = float(bounds[0]), float(bounds[1])
        self.net = nn.Sequential(
            nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, bottleneck), nn.ReLU(),
            nn.Linear(bottleneck, hidden), nn.ReLU(), nn.Linear(hidden, dim),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) - self.lo) / (self.hi - self.lo)
        return torch.sigmoid(self.net(z)) * (self.hi - self.lo) + self.lo


class ReconstructionDetector(Detector):
    """Reconstruction error of a small fully connected autoencoder trained on clean inputs
    (the autoencoder monitor named in Tang 2025, "Security-First AI", §4.2; cf. Meng & Chen
    2017, MagNet). Score = mean squared error per sample; with ``normalise`` each input
    dimension's squared error is divided by its mean on a held-out share of the clean data
    (floored at ``min_var``), so that errors where clean inputs are reconstructed almost
    perfectly (background pixels) weigh more than errors where they never are."""

    name = "reconstruction"
    _fit_marker = "autoencoder_"

    def __init__(
        self, *, hidden: int = 256, bottleneck: int = 32, epochs: int = 150, batch_size: int = 128,
        lr: float = 2e-3, max_steps: int = 3000, normalise: bool = True, min_var: float = 1e-4,
        holdout: float = 0.2, seed: int = 0, bounds: Bounds = (0.0, 1.0),
    ) -> None:  # fmt: skip
        self.hidden = hidden
        self.bottleneck = bottleneck
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.max_steps = max_steps
        self.normalise = normalise
        self.min_var = min_var
        self.holdout = holdout
        self.seed = seed
        self.bounds = bounds

    def _build_module(self, key: str, scalars: dict[str, Any]) -> nn.Module:
        return _AutoEncoder(
            int(scalars["input_dim_"]), self.hidden, self.bottleneck, tuple(self.bounds)
        )

    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ReconstructionDetector:
        if not 0.0 < self.holdout < 1.0 or self.min_var <= 0:
            raise ConfigError("reconstruction needs 0 < holdout < 1 and min_var > 0")
        dim = int(x[0].numel())
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_hold = max(1, int(round(self.holdout * len(x)))) if self.normalise else 0
        held, x = x[perm[:n_hold]].flatten(1), x[perm[n_hold:]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            ae = _AutoEncoder(dim, self.hidden, self.bottleneck, tuple(self.bounds))
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(ae.parameters(), lr=self.lr)
        flat = x.flatten(1)
        steps = (len(flat) + self.batch_size - 1) // self.batch_size
        epochs = max(1, min(self.epochs, self.max_steps // steps))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        ae.train()
        with task("fitting the reconstruction detector", epochs * steps) as advance:
            for _ in range(epochs):
                perm = torch.randperm(len(flat), generator=gen)
                for i in range(0, len(flat), self.batch_size):
                    batch = flat[perm[i : i + self.batch_size]]
                    loss = F.mse_loss(ae(batch), batch)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    advance()
                sched.step()
        ae.eval()
        for p in ae.parameters():
            p.requires_grad_(False)
        with torch.no_grad():
            if self.normalise:
                var = (ae(held) - held).pow(2).mean(0).clamp_min(self.min_var)
            else:
                var = torch.ones(dim)
        self.input_dim_ = dim
        self.autoencoder_ = ae
        self.residual_var_ = var
        return self

    def _score(self, x: torch.Tensor, outputs: TapOutputs | None) -> torch.Tensor:
        flat = x.flatten(1)
        return ((self.autoencoder_(flat) - flat).pow(2) / self.residual_var_).mean(1)


class ZScoreDetector(Detector):
    """Baseline: per-dimension z-scores of the input against the clean training data; the
    score is the mean squared z over dimensions (a diagonal-Gaussian Mahalanobis distance).
    ``min_std`` floors the standard deviation of near-constant pixels."""

    name = "zscore"
    _fit_marker = "mean_"

    def __init__(self, *, min_std: float = 0.01) -> None:
        self.min_std = min_std

    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ZScoreDetector:
        if self.min_std <= 0:
            raise ConfigError(f"min_std must be > 0, got {self.min_std}")
        flat = x.flatten(1).double()
        self.mean_ = flat.mean(0).float()
        self.std_ = flat.std(0).clamp_min(self.min_std).float()
        return self

    def _score(self, x: torch.Tensor, outputs: TapOutputs | None) -> torch.Tensor:
        return ((x.flatten(1) - self.mean_) / self.std_).pow(2).mean(1)


def reduce_bit_depth(x: torch.Tensor, bits: int, bounds: Bounds = (0.0, 1.0)) -> torch.Tensor:
    """Quantise ``x`` to 2**bits levels within ``bounds`` (Xu et al. 2018, §4.1)."""
    lo, hi = bounds
    levels = 2**bits - 1
    return torch.round((x - lo) / (hi - lo) * levels) / levels * (hi - lo) + lo


def median_smooth(x: torch.Tensor, size: int) -> torch.Tensor:
    """Median filter over ``size``×``size`` windows per channel, same output shape
    (reflect padding; for even sizes the upper median, as scipy.ndimage.median_filter)."""
    lo = (size - 1) // 2
    hi = size - 1 - lo
    mode = "reflect" if min(x.shape[-2:]) > max(lo, hi) else "replicate"
    padded = F.pad(x, (lo, hi, lo, hi), mode=mode)
    patches = padded.unfold(2, size, 1).unfold(3, size, 1)
    flat = patches.reshape(*patches.shape[:4], size * size)
    return flat.sort(-1).values[..., (size * size) // 2]


class FeatureSqueezingDetector(Detector):
    """Feature squeezing (Xu, Evans & Qi 2018, NDSS): compare the model's softmax on the
    input with its softmax on squeezed copies (bit-depth reduction to ``bit_depth`` bits and
    ``median_size``×``median_size`` median smoothing); the score is the largest L1
    distance. ``median_size="auto"`` smooths 2×2 on images of side >= 16 only: on 8×8 digits
    a median filter erases strokes and flips clean predictions, which ruins the threshold. Nothing is learned: ``fit`` only binds the model; ``calibrate`` sets the
    threshold."""

    name = "squeeze"
    needs_model = True
    _fit_marker = "fitted_"

    def __init__(
        self, model: nn.Module | ModelTap | None = None, *, bit_depth: int = 2,
        median_size: int | str | None = "auto", bounds: Bounds = (0.0, 1.0),
    ) -> None:  # fmt: skip
        self.model = model
        self.bit_depth = bit_depth
        self.median_size = median_size
        self.bounds = bounds

    def _median(self, x: torch.Tensor) -> int | None:
        if self.median_size == "auto":
            return 2 if min(x.shape[-2:]) >= 16 else None
        return self.median_size  # type: ignore[return-value]

    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> FeatureSqueezingDetector:
        if self.bit_depth < 1:
            raise ConfigError(f"feature squeezing needs bit_depth >= 1, got {self.bit_depth}")
        median = self.median_size
        if median != "auto" and median is not None and (not isinstance(median, int) or median < 2):
            raise ConfigError(
                f"median_size must be 'auto', null or an integer >= 2, got {median!r}"
            )
        self.model = self._resolve_tap(self.model)
        self.fitted_ = True
        return self

    def _score(self, x: torch.Tensor, outputs: TapOutputs | None) -> torch.Tensor:
        tap = self._resolve_tap(self.model)
        logits = outputs.logits if outputs is not None else tap.logits(x)
        p0 = logits.softmax(1)
        bounds = tuple(self.bounds)
        views = [reduce_bit_depth(x, self.bit_depth, bounds)]
        median = self._median(x)
        if median is not None:
            views.append(median_smooth(x, median))
        p = tap.logits(torch.cat(views)).softmax(1).view(len(views), x.shape[0], -1)
        return (p - p0[None]).abs().sum(2).max(0).values


DETECTORS: dict[str, type[Detector]] = {
    d.name: d
    for d in (MahalanobisDetector, ReconstructionDetector, ZScoreDetector, FeatureSqueezingDetector)
}


def build_detectors(
    config: GuardConfig, tap: ModelTap, *, bounds: Bounds = (0.0, 1.0)
) -> dict[str, Detector]:
    """The enabled detectors of ``config``, unfitted, in a fixed order."""
    c = config.detectors
    out: dict[str, Detector] = {}
    if c.mahalanobis.enabled:
        p = c.mahalanobis.model_dump(exclude={"enabled"})
        p["conv_views"] = tuple(p["conv_views"])
        out["mahalanobis"] = MahalanobisDetector(tap, **p, seed=config.seed)
    if c.reconstruction.enabled:
        p = c.reconstruction.model_dump(exclude={"enabled"})
        out["reconstruction"] = ReconstructionDetector(**p, bounds=bounds)
    if c.zscore.enabled:
        out["zscore"] = ZScoreDetector(min_std=c.zscore.min_std)
    if c.squeeze.enabled:
        out["squeeze"] = FeatureSqueezingDetector(
            tap, bit_depth=c.squeeze.bit_depth, median_size=c.squeeze.median_size, bounds=bounds
        )
    if not out:
        raise ConfigError("the guard config disables every detector: enable at least one")
    return out
