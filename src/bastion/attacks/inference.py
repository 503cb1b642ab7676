"""Membership inference: per-example membership scores and their evaluation.

A membership score is higher when the attacker believes ``(x, y)`` was in the model's
training set. This module holds the simple attacks and the metrics; the shadow-model attack
LiRA (Carlini et al. 2022) lives in :mod:`bastion.attacks.lira` and is re-exported here.

- :func:`loss_threshold_scores`: the loss-threshold attack of Yeom et al. 2018 ("Privacy
  Risk in Machine Learning: Analyzing the Connection to Overfitting"): score = −loss.
- :func:`correctness_scores`: the label-only gap attack (Yeom et al. 2018, and the
  "gap attack" baseline of Choquette-Choo et al. 2021): 1 if the model predicts ``y``.
- :func:`logit_confidence`: LiRA's logit-scaled confidence φ = log(p_y / (1 − p_y)),
  computed stably from logits as ``z_y − logsumexp_{j≠y} z_j``.
- :func:`membership_metrics`: AUC, TPR at low FPR (0.1 % and 1 %, the metric Carlini et al.
  2022 argue for) and a ROC curve sampled on a log-spaced FPR grid for log-scale plots.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bastion.errors import AttackError
from bastion.models.predict import predict_logits

LOW_FPRS = (0.001, 0.01)


def _check_xy(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.shape[0] != y.shape[0]:
        raise AttackError(f"x has {x.shape[0]} samples but y has {y.shape[0]}")
    if x.shape[0] == 0:
        raise AttackError("no samples to score")


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """φ = log(p_y / (1 − p_y)) for softmax probabilities p, without forming p.

    ``log p_y = z_y − LSE(z)`` and ``log(1 − p_y) = LSE_{j≠y}(z_j) − LSE(z)``, so
    φ = z_y − LSE_{j≠y}(z_j): finite even when p_y rounds to 1 in float32."""
    if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
        raise AttackError(f"logits must be (N, K) with N = len(y), got {tuple(logits.shape)}")
    logits = logits.double()
    z_y = logits.gather(1, y.view(-1, 1)).squeeze(1)
    others = logits.scatter(1, y.view(-1, 1), float("-inf"))
    return (z_y - torch.logsumexp(others, dim=1)).float()


def loss_threshold_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024
) -> torch.Tensor:
    """Yeom et al. 2018: members have lower loss. Returns −cross-entropy per example, so that
    thresholding the score at −τ is the attack "member iff loss < τ"."""
    _check_xy(x, y)
    logits = predict_logits(model, x, batch_size=batch_size)
    return -F.cross_entropy(logits.double(), y.to(logits.device), reduction="none").float().cpu()


def correctness_scores(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 1024
) -> torch.Tensor:
    """Label-only gap attack (Yeom et al. 2018): 1.0 where the model predicts ``y``, else 0.0.
    Needs only the predicted label, so it applies to label-only access."""
    _check_xy(x, y)
    pred = predict_logits(model, x, batch_size=batch_size).argmax(1).cpu()
    return (pred == y.cpu()).float()


@dataclass(frozen=True)
class MembershipMetrics:
    """How well scores separate members from non-members.

    ``tpr_at_fpr`` maps each low FPR to the TPR of the best threshold whose *measured* FPR is
    at most that level (no interpolation between ROC vertices, which would credit the attack
    with points it never reached), and to NaN where fewer than ``1/fpr`` non-members make the
    level unresolvable. ``tpr_ci`` holds the 95 % Clopper–Pearson interval of each TPR over
    the members. ``fpr``/``tpr`` is the ROC curve on a log-spaced FPR grid from about
    1/n_nonmembers to 1, ready for a log-scale plot."""

    auc: float
    tpr_at_fpr: dict[float, float]
    fpr: list[float] = field(repr=False)
    tpr: list[float] = field(repr=False)
    n_members: int
    n_nonmembers: int
    balanced_accuracy: float
    tpr_ci: dict[float, tuple[float, float]] = field(default_factory=dict, repr=False)

    def tpr_at(self, fpr: float) -> float:
        if fpr not in self.tpr_at_fpr:
            raise AttackError(
                f"TPR at FPR {fpr} was not computed: pass fprs=[..., {fpr}] to membership_metrics"
            )
        return self.tpr_at_fpr[fpr]

    def as_metrics(self) -> dict[str, float]:
        """Flat metric names for a Finding (``tpr_at_0.1%_fpr`` style)."""
        out = {"auc": self.auc, "balanced_accuracy": self.balanced_accuracy}
        for f, t in self.tpr_at_fpr.items():
            out[f"tpr_at_{f * 100:g}%_fpr"] = t
            if f in self.tpr_ci:
                lo, hi = self.tpr_ci[f]
                out[f"tpr_at_{f * 100:g}%_fpr_ci_low"] = lo
                out[f"tpr_at_{f * 100:g}%_fpr_ci_high"] = hi
        return out


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, level: float, n_neg: int) -> float:
    """TPR of the best ROC vertex with measured FPR <= level; NaN when unresolvable."""
    if n_neg * level < 1:
        return float("nan")
    ok = fpr <= level + 1e-12
    return float(tpr[ok].max()) if ok.any() else 0.0


def clopper_pearson(k: int, n: int, alpha: float = 0.05) -> tuple[float, float]:
    """The exact binomial confidence interval for ``k`` successes in ``n`` trials."""
    from scipy.stats import beta

    lo = 0.0 if k == 0 else float(beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def membership_metrics(
    scores: torch.Tensor | np.ndarray,
    is_member: torch.Tensor | np.ndarray,
    *,
    fprs: Sequence[float] = LOW_FPRS,
    curve_points: int = 100,
) -> MembershipMetrics:
    """AUC, TPR at each FPR in ``fprs``, best balanced accuracy and a log-grid ROC curve,
    from scikit-learn's ``roc_curve`` over all thresholds."""
    from sklearn.metrics import auc as area
    from sklearn.metrics import roc_curve

    s = _as_numpy(scores).astype(np.float64).ravel()
    m = _as_numpy(is_member).astype(bool).ravel()
    if s.shape != m.shape:
        raise AttackError(f"{s.size} scores but {m.size} membership labels")
    if not np.isfinite(s).all():
        raise AttackError("membership scores contain NaN or Inf values")
    n_pos, n_neg = int(m.sum()), int((~m).sum())
    if n_pos == 0 or n_neg == 0:
        raise AttackError(f"need both members and non-members to evaluate, got {n_pos} and {n_neg}")
    if any(not 0 < f < 1 for f in fprs):
        raise AttackError(f"FPR levels must lie in (0, 1), got {list(fprs)}")
    fpr, tpr, _ = roc_curve(m, s, drop_intermediate=False)
    lowest = 10.0 ** np.floor(np.log10(1.0 / n_neg))
    grid = np.unique(np.concatenate([np.geomspace(lowest, 1.0, curve_points), list(fprs)]))
    return MembershipMetrics(
        auc=float(area(fpr, tpr)),
        tpr_at_fpr={float(f): _tpr_at(fpr, tpr, f, n_neg) for f in fprs},
        tpr_ci={
            float(f): clopper_pearson(round(_tpr_at(fpr, tpr, f, n_neg) * n_pos), n_pos)
            for f in fprs
            if n_neg * f >= 1
        },
        fpr=[float(v) for v in grid],
        tpr=[float(v) for v in np.interp(grid, fpr, tpr)],
        n_members=n_pos,
        n_nonmembers=n_neg,
        balanced_accuracy=float(np.max(0.5 * (tpr + 1.0 - fpr))),
    )


def _as_numpy(a: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(a, torch.Tensor):
        return a.detach().cpu().numpy()
    return np.asarray(a)


def __getattr__(name: str) -> object:
    # LiRA lives in its own module; import it lazily so this module stays light.
    if name == "LiRA":
        from bastion.attacks.lira import LiRA

        return LiRA
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LOW_FPRS",
    "LiRA",  # noqa: F822 (lazy attribute)
    "MembershipMetrics",
    "correctness_scores",
    "logit_confidence",
    "loss_threshold_scores",
    "membership_metrics",
    "predict_logits",
]
