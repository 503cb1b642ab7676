"""Input detectors: Mahalanobis on penultimate features, autoencoder reconstruction error,
a per-dimension z-score baseline, and feature squeezing.

Each follows the :class:`~bastion.guard.base.Detector` contract: parameters in ``__init__``,
``fit(x, y)`` on clean data, ``score(x)`` higher = more anomalous, ``calibrate(x, fpr)``.

Input-space detectors (reconstruction, z-score) work in range-normalised units
``(x − lower) / (upper − lower)`` per feature, from the input spec's per-feature bounds
(``lower``/``upper``: one value for all features, or one per flat feature). Which detectors
are built depends on the modality and on what the model exposes (:func:`build_detectors`):
feature squeezing is an image transform and is never built for tabular rows; Mahalanobis
needs the model's hidden layers.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from bastion.data.spec import InputSpec
from bastion.errors import ConfigError
from bastion.guard.base import Detector
from bastion.guard.config import GuardConfig
from bastion.guard.mahalanobis import MahalanobisDetector
from bastion.guard.tap import Tap, TapOutputs
from bastion.progress import task

Bounds = tuple[float, float]


def _range(
    lower: list[float] | None, upper: list[float] | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(lo, width) as flat tensors (shape () for one value for all); width 1 where zero."""
    lo = torch.tensor(lower if lower is not None else [0.0], dtype=torch.float32)
    hi = torch.tensor(upper if upper is not None else [1.0], dtype=torch.float32)
    lo, hi = (
        (lo.reshape(()) if lo.numel() == 1 else lo),
        (hi.reshape(()) if hi.numel() == 1 else hi),
    )
    width = hi - lo
    return lo, torch.where(width > 0, width, torch.ones_like(width))


def _check_dim(lower: list[float] | None, upper: list[float] | None, dim: int, who: str) -> None:
    for name, vals in (("lower", lower), ("upper", upper)):
        if vals is not None and len(vals) not in (1, dim):
            raise ConfigError(f"{who}: {name} bounds have {len(vals)} values for {dim} features")


class _AutoEncoder(nn.Module):
    """A fully connected autoencoder on range-normalised inputs: z = (x − lo) / width in,
    sigmoid out, mapped back to input units. ``lo``/``width`` are flat (D,) or scalars;
    they are not part of the state dict (the detector's parameters hold them)."""

    def __init__(
        self, dim: int, hidden: int, bottleneck: int, lo: torch.Tensor, width: torch.Tensor
    ) -> None:
        super().__init__()
        self.register_buffer("lo", lo.clone(), persistent=False)
        self.register_buffer("width", width.clone(), persistent=False)
        self.net = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.ReLU(),
            nn.Linear(hidden, bottleneck),
            nn.ReLU(),
            nn.Linear(bottleneck, hidden),
            nn.ReLU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = (x.flatten(1) - self.lo) / self.width
        return torch.sigmoid(self.net(z)) * self.width + self.lo


class ReconstructionDetector(Detector):
    """Reconstruction error of a small fully connected autoencoder trained on clean inputs
    (the autoencoder monitor named in Tang 2025, "Security-First AI", §4.2; cf. Meng & Chen
    2017, MagNet). Score = mean squared error per sample; with ``normalise`` each input
    dimension's squared error is divided by its mean on a held-out share of the clean data
    (floored at ``min_var``), so that errors where clean inputs are reconstructed almost
    perfectly (background pixels) weigh more than errors where they never are.

    The autoencoder works in range-normalised units (``lower``/``upper``: the input spec's
    bounds, one value for all features or one per flat feature). Its bottleneck is at most
    half the input dimension, so that it cannot learn the identity on short feature
    vectors."""

    name = "reconstruction"
    _fit_marker = "autoencoder_"

    def __init__(
        self,
        *,
        hidden: int = 256,
        bottleneck: int = 32,
        epochs: int = 150,
        batch_size: int = 128,
        lr: float = 2e-3,
        max_steps: int = 3000,
        normalise: bool = True,
        min_var: float = 1e-4,
        holdout: float = 0.2,
        seed: int = 0,
        lower: list[float] | None = None,
        upper: list[float] | None = None,
    ) -> None:
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
        self.lower = lower
        self.upper = upper

    def _autoencoder(self, dim: int, bottleneck: int) -> _AutoEncoder:
        lo, width = _range(self.lower, self.upper)
        return _AutoEncoder(dim, self.hidden, bottleneck, lo, width)

    def _build_module(self, key: str, scalars: dict[str, Any]) -> nn.Module:
        bottleneck = int(scalars.get("bottleneck_", self.bottleneck))
        return self._autoencoder(int(scalars["input_dim_"]), bottleneck)

    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ReconstructionDetector:
        if not 0.0 < self.holdout < 1.0 or self.min_var <= 0:
            raise ConfigError("reconstruction needs 0 < holdout < 1 and min_var > 0")
        dim = int(x[0].numel())
        _check_dim(self.lower, self.upper, dim, "reconstruction")
        bottleneck = max(1, min(self.bottleneck, dim // 2))
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        n_hold = max(1, int(round(self.holdout * len(x)))) if self.normalise else 0
        held, x = x[perm[:n_hold]].flatten(1), x[perm[n_hold:]]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            ae = self._autoencoder(dim, bottleneck)
        gen = torch.Generator().manual_seed(self.seed)
        opt = torch.optim.Adam(ae.parameters(), lr=self.lr)
        flat = x.flatten(1)
        steps = (len(flat) + self.batch_size - 1) // self.batch_size
        epochs = max(1, min(self.epochs, self.max_steps // steps))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        scale = ae.width
        ae.train()
        with task("fitting the reconstruction detector", epochs * steps) as advance:
            for _ in range(epochs):
                perm = torch.randperm(len(flat), generator=gen)
                for i in range(0, len(flat), self.batch_size):
                    batch = flat[perm[i : i + self.batch_size]]
                    loss = F.mse_loss(ae(batch) / scale, batch / scale)
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
            else:  # squared errors in range-normalised units
                var = scale.pow(2).expand(dim).clone()
        self.input_dim_ = dim
        self.bottleneck_ = bottleneck
        self.autoencoder_ = ae
        self.residual_var_ = var
        return self

    def _score(self, x: torch.Tensor, outputs: TapOutputs | None) -> torch.Tensor:
        flat = x.flatten(1)
        return ((self.autoencoder_(flat) - flat).pow(2) / self.residual_var_).mean(1)


class ZScoreDetector(Detector):
    """Baseline: per-dimension z-scores of the input against the clean training data; the
    score is the mean squared z over dimensions (a diagonal-Gaussian Mahalanobis distance).
    ``min_std`` floors the standard deviation of near-constant features, as a share of the
    feature's range (``lower``/``upper``, the input spec's bounds; [0, 1] by default)."""

    name = "zscore"
    _fit_marker = "mean_"

    def __init__(
        self,
        *,
        min_std: float = 0.01,
        lower: list[float] | None = None,
        upper: list[float] | None = None,
    ) -> None:
        self.min_std = min_std
        self.lower = lower
        self.upper = upper

    def fit(self, x: torch.Tensor, y: torch.Tensor | None = None) -> ZScoreDetector:
        if self.min_std <= 0:
            raise ConfigError(f"min_std must be > 0, got {self.min_std}")
        flat = x.flatten(1).double()
        _check_dim(self.lower, self.upper, flat.shape[1], "zscore")
        _, width = _range(self.lower, self.upper)
        self.mean_ = flat.mean(0).float()
        self.std_ = torch.maximum(flat.std(0).float(), self.min_std * width).float()
        return self

    def _score(self, x: torch.Tensor, outputs: TapOutputs | None) -> torch.Tensor:
        return ((x.flatten(1) - self.mean_) / self.std_).pow(2).mean(1)


def reduce_bit_depth(
    x: torch.Tensor, bits: int, bounds: Bounds | tuple[torch.Tensor, torch.Tensor] = (0.0, 1.0)
) -> torch.Tensor:
    """Quantise ``x`` to 2**bits levels within ``bounds`` (Xu et al. 2018, §4.1): a
    ``(low, high)`` pair, or tensors broadcastable to one sample (per-pixel bounds, e.g. a
    :class:`~bastion.data.box.Box`). Values of zero range are left as they are."""
    lo, hi = bounds
    lo_t = torch.as_tensor(lo, dtype=x.dtype, device=x.device)
    hi_t = torch.as_tensor(hi, dtype=x.dtype, device=x.device)
    width = hi_t - lo_t
    safe = torch.where(width > 0, width, torch.ones_like(width))
    levels = 2**bits - 1
    out = torch.round((x - lo_t) / safe * levels) / levels * safe + lo_t
    return torch.where(width > 0, out, x)


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
    a median filter erases strokes and flips clean predictions, which ruins the threshold.
    Both squeezers are image transforms: :func:`build_detectors` builds this detector for
    images only. Bit depth is reduced within ``lower``/``upper`` (one value for all pixels,
    or one per pixel). Nothing is learned: ``fit`` only binds the model; ``calibrate`` sets
    the threshold."""

    name = "squeeze"
    needs_model = True
    _fit_marker = "fitted_"

    def __init__(
        self,
        model: nn.Module | Tap | None = None,
        *,
        bit_depth: int = 2,
        median_size: int | str | None = "auto",
        lower: list[float] | None = None,
        upper: list[float] | None = None,
    ) -> None:
        self.model = model
        self.bit_depth = bit_depth
        self.median_size = median_size
        self.lower = lower
        self.upper = upper

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
        if x.ndim != 4:
            raise ConfigError(
                f"feature squeezing transforms images (N, C, H, W), got inputs of shape "
                f"{tuple(x.shape)}: disable it (detectors.squeeze.enabled: false)"
            )
        _check_dim(self.lower, self.upper, int(x[0].numel()), "squeeze")
        self.model = self._resolve_tap(self.model)
        self.fitted_ = True
        return self

    def _bounds(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lo = torch.tensor(self.lower if self.lower is not None else [0.0])
        hi = torch.tensor(self.upper if self.upper is not None else [1.0])
        shape = tuple(x.shape[1:])
        return (lo.reshape(()) if lo.numel() == 1 else lo.reshape(shape)), (
            hi.reshape(()) if hi.numel() == 1 else hi.reshape(shape)
        )

    def _score(self, x: torch.Tensor, outputs: TapOutputs | None) -> torch.Tensor:
        tap = self._resolve_tap(self.model)
        logits = outputs.logits if outputs is not None else tap.logits(x)
        p0 = logits.softmax(1)
        views = [reduce_bit_depth(x, self.bit_depth, self._bounds(x))]
        median = self._median(x)
        if median is not None:
            views.append(median_smooth(x, median))
        p = tap.logits(torch.cat(views)).softmax(1).view(len(views), x.shape[0], -1)
        return (p - p0[None]).abs().sum(2).max(0).values


DETECTORS: dict[str, type[Detector]] = {
    d.name: d
    for d in (MahalanobisDetector, ReconstructionDetector, ZScoreDetector, FeatureSqueezingDetector)
}
INPUT_SPACE = ("reconstruction", "zscore")


def build_detectors(
    config: GuardConfig, tap: Tap, *, spec: InputSpec | None = None
) -> tuple[dict[str, Detector], dict[str, str]]:
    """The detectors of ``config`` that apply to the inputs (``spec``'s modality; images
    when no spec) and to what ``tap`` exposes, unfitted, in a fixed order; and, for every
    detector not built, why (disabled in the config, an image transform on tabular rows,
    no hidden layers to read)."""
    c = config.detectors
    modality = spec.modality if spec is not None else "image"
    lower = list(spec.lower) if spec is not None else None
    upper = list(spec.upper) if spec is not None else None
    out: dict[str, Detector] = {}
    skipped: dict[str, str] = {}
    if not c.mahalanobis.enabled:
        skipped["mahalanobis"] = "disabled in the guard config"
    elif not tap.internals:
        why = getattr(tap, "why", "") or "the model's internals cannot be read"
        skipped["mahalanobis"] = (
            f"not applicable: needs the model's hidden layers; {why}. Input-space detectors "
            "(zscore, reconstruction) are used instead"
        )
    else:
        p = c.mahalanobis.model_dump(exclude={"enabled"})
        p["conv_views"] = tuple(p["conv_views"])
        out["mahalanobis"] = MahalanobisDetector(tap, **p, seed=config.seed)
    if c.reconstruction.enabled:
        p = c.reconstruction.model_dump(exclude={"enabled"})
        out["reconstruction"] = ReconstructionDetector(**p, lower=lower, upper=upper)
    else:
        skipped["reconstruction"] = "disabled in the guard config"
    if c.zscore.enabled:
        out["zscore"] = ZScoreDetector(min_std=c.zscore.min_std, lower=lower, upper=upper)
    else:
        skipped["zscore"] = "disabled in the guard config"
    if not c.squeeze.enabled:
        skipped["squeeze"] = "disabled in the guard config"
    elif modality != "image":
        skipped["squeeze"] = (
            f"not applicable: feature squeezing (bit-depth reduction, median smoothing) "
            f"transforms images; the inputs are {modality}"
        )
    else:
        out["squeeze"] = FeatureSqueezingDetector(
            tap,
            bit_depth=c.squeeze.bit_depth,
            median_size=c.squeeze.median_size,
            lower=lower,
            upper=upper,
        )
    if not out and all(v == "disabled in the guard config" for v in skipped.values()):
        raise ConfigError("the guard config disables every detector: enable at least one")
    if not out:
        reasons = "; ".join(f"{k}: {v}" for k, v in skipped.items())
        raise ConfigError(
            f"no detector of the guard config applies to these inputs ({reasons}): enable at "
            "least one (zscore and reconstruction work for every model and modality)"
        )
    return out, skipped
