"""The Likelihood Ratio Attack (LiRA) of Carlini et al. 2022, "Membership Inference Attacks
From First Principles" (IEEE S&P).

Protocol (their §IV–V):

1. ``fit(population, build_model)`` trains ``n_shadow`` shadow models, each on a random half
   of the population, with the target's training recipe. The halves are balanced: every
   population example is IN the training set of exactly ⌊n_shadow/2⌋ shadows and OUT of the
   rest (as in the paper's released code), so each example gets both IN and OUT samples.
2. For every example the attack looks at the logit-scaled confidence
   φ = log(p_y / (1 − p_y)) (:func:`~bastion.attacks.inference.logit_confidence`), which is
   close to Gaussian across training runs, and fits per-example Gaussians
   N(μ_in, σ_in²) and N(μ_out, σ_out²) to the shadow models' φ values.
3. ``score(model, x, y)`` computes the target's φ and returns
   - online (``online=True``): the log-likelihood ratio
     log N(φ; μ_in, σ_in²) − log N(φ; μ_out, σ_out²);
   - offline (``online=False``): a one-sided test against the OUT distribution only,
     −log Pr[Z > φ] with Z ~ N(μ_out, σ_out²) (higher = more likely a member). Offline
     scores work for any candidate (one outside the population is OUT of every shadow).
   With ``fixed_variance=True`` a single σ, pooled over the within-example deviations of
   all population examples (IN and OUT), replaces the per-example σ's: better with few
   shadow models (the paper's Fig. 7).
   With ``augment=True`` the models are also queried on the four one-pixel shifts of each
   input; the per-query scores are averaged (the paper's query augmentation). The default
   is augmentation-free, matching a training recipe without augmentation.

The candidates scored online must belong to the population given to ``fit`` (rows are
matched exactly on pixels and label), since their IN statistics come from the shadows that
trained on them. To evaluate a target the way the paper does, take the population to be
the target's training set together with held-out data, and score a balanced set of
training members and held-out non-members (the membership probe does exactly this).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from bastion.attacks.inference import logit_confidence, predict_logits
from bastion.data.dataset import Dataset
from bastion.errors import AttackError, NotFittedError
from bastion.models.train import train_model

log = logging.getLogger(__name__)
MIN_STD = 1e-4
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def shifted_queries(x: torch.Tensor) -> torch.Tensor:
    """(A=5, N, C, H, W): the input and its one-pixel shifts up, down, left and right
    (edges replicated, so pixel values stay within the input's range)."""
    padded = F.pad(x, (1, 1, 1, 1), mode="replicate")
    h, w = x.shape[-2:]
    views = [
        padded[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
        for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1))
    ]
    return torch.stack(views)


def _row_keys(x: torch.Tensor, y: torch.Tensor) -> list[bytes]:
    pixels = np.ascontiguousarray(x.detach().cpu().flatten(1).numpy().astype(np.float32))
    labels = y.detach().cpu().numpy().astype(np.int64)
    return [
        p.tobytes() + int(k).to_bytes(8, "little", signed=True)
        for p, k in zip(pixels, labels, strict=True)
    ]


def _normal_logpdf(v: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((v - mean) / std) ** 2 - std.log() - _HALF_LOG_2PI


class LiRA:
    """Likelihood Ratio Attack (Carlini et al. 2022) with online/offline and fixed-variance
    variants. Parameters are stored unchanged; ``fit`` trains the shadow models.

    Learned attributes: ``shadow_models_`` (list of modules), ``in_mask_`` (n_shadow, N)
    bool, ``shadow_phi_`` (n_shadow, N, A) shadow confidences on the population,
    ``pooled_std_`` (A,) the shared σ used by ``fixed_variance``.
    """

    def __init__(
        self,
        *,
        n_shadow: int = 8,
        online: bool = True,
        fixed_variance: bool = False,
        epochs: int = 10,
        lr: float = 1e-3,
        batch_size: int = 64,
        val_fraction: float = 0.0,
        augment: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.n_shadow = n_shadow
        self.online = online
        self.fixed_variance = fixed_variance
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.augment = augment
        self.seed = seed
        self.device = device

    # ------------------------------------------------------------------ fit
    def fit(self, population: Dataset, build_model: Callable[[], nn.Module]) -> LiRA:
        """Train ``n_shadow`` shadow models (``build_model()`` each) on balanced random halves
        of ``population`` and record their confidences on every population example."""
        models = [self.train_shadow(population, build_model, k) for k in range(self.n_shadow)]
        self.from_shadows(population, [self._phi(m, population.x, population.y) for m in models])
        self.shadow_models_ = models
        return self

    def split(self, population: Dataset) -> torch.Tensor:
        """Which population rows each shadow trains on, (n_shadow, N) bool: for each row a
        random permutation of the shadows, drawn from ``seed``; its first half trains on it."""
        if not isinstance(self.n_shadow, int) or self.n_shadow < 2:
            raise AttackError(f"LiRA needs n_shadow >= 2 shadow models, got {self.n_shadow}")
        if len(population) < 4:
            raise AttackError(f"the population has {len(population)} rows: LiRA needs at least 4")
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.rand(self.n_shadow, len(population), generator=gen).argsort(0)
        return order < self.n_shadow // 2

    def train_shadow(
        self, population: Dataset, build_model: Callable[[], nn.Module], k: int
    ) -> nn.Module:
        """Shadow model ``k``, trained on its rows of :meth:`split` with its own seed: the
        same module in any process, so shadows can be trained apart (one task each)."""
        in_mask = self.split(population)
        torch.manual_seed(self.seed * 7919 + k)
        model = build_model()
        train_model(
            model,
            population.subset(in_mask[k].nonzero().flatten(), split="shadow"),
            epochs=self.epochs,
            batch_size=self.batch_size,
            lr=self.lr,
            val_fraction=self.val_fraction,
            seed=self.seed * 7919 + k,
            device=self.device,
            description=f"LiRA shadow model {k + 1}/{self.n_shadow}",
        )
        model.eval()
        log.info("LiRA: trained shadow model %d/%d", k + 1, self.n_shadow)
        return model

    def confidences(self, model: nn.Module, population: Dataset) -> torch.Tensor:
        """A shadow model's (N, A) logit-scaled confidences on the population."""
        return self._phi(model, population.x, population.y)

    def from_shadows(self, population: Dataset, phis: list[torch.Tensor]) -> LiRA:
        """Fitted from the shadows' confidences on ``population`` (:meth:`confidences`, in
        shadow order). Without the shadow modules (``shadow_models_`` stays empty) it scores
        population rows only."""
        if len(phis) != self.n_shadow:
            raise AttackError(f"LiRA has {len(phis)} of its {self.n_shadow} shadow models")
        self.shadow_models_ = []
        self.in_mask_ = self.split(population)
        self.shadow_phi_ = torch.stack(phis)
        self.row_index_ = {key: i for i, key in enumerate(_row_keys(population.x, population.y))}
        self.pooled_std_ = self._pooled_std(self.shadow_phi_, self.in_mask_)
        return self

    @staticmethod
    def _pooled_std(phi: torch.Tensor, in_mask: torch.Tensor) -> torch.Tensor:
        """σ shared by all examples: the root of the pooled within-example variance of the
        IN and OUT groups (falls back to the overall spread when no group has 2 samples)."""
        ss, dof = torch.zeros(phi.shape[-1], dtype=torch.float64), 0
        for group in (in_mask, ~in_mask):
            g = group.unsqueeze(-1).double()
            count = group.sum(0).double()  # (N,)
            mean = (phi.double() * g).sum(0) / count.clamp_min(1).unsqueeze(-1)
            ss += (((phi.double() - mean) ** 2) * g).sum((0, 1))
            dof += int((count - 1).clamp_min(0).sum())
        if dof == 0:
            return phi.double().flatten(0, 1).std(0).clamp_min(MIN_STD).float()
        return (ss / dof).sqrt().clamp_min(MIN_STD).float()

    def _phi(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N, A) logit-scaled confidences of ``model`` on the query set of ``x``."""
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        x, y = x.to(device), y.to(device)
        queries = shifted_queries(x) if self.augment else x.unsqueeze(0)
        return torch.stack(
            [logit_confidence(predict_logits(model, q), y).cpu() for q in queries], dim=1
        )

    def variant(self, *, online: bool | None = None, fixed_variance: bool | None = None) -> LiRA:
        """A copy with another scoring variant that shares these fitted shadow models
        (online/offline and the variance choice only change ``score``, not ``fit``)."""
        self._check_fitted()
        other = LiRA(
            **{
                **self.get_params(),
                "online": self.online if online is None else online,
                "fixed_variance": self.fixed_variance if fixed_variance is None else fixed_variance,
            }
        )
        for name, value in vars(self).items():
            if name.endswith("_"):
                setattr(other, name, value)
        return other

    def get_params(self) -> dict[str, object]:
        """The constructor parameters (scikit-learn style)."""
        names = (
            "n_shadow",
            "online",
            "fixed_variance",
            "epochs",
            "lr",
            "batch_size",
            "val_fraction",
            "augment",
            "seed",
            "device",
        )
        return {n: getattr(self, n) for n in names}

    # ---------------------------------------------------------------- score
    def _check_fitted(self) -> None:
        if not hasattr(self, "shadow_models_"):
            raise NotFittedError(self)

    def shadow_statistics(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shadow confidences (n_shadow, N, A) on (x, y) and the IN mask (n_shadow, N):
        stored values for population rows, fresh forward passes (all OUT) for other rows."""
        self._check_fitted()
        idx = torch.tensor([self.row_index_.get(k, -1) for k in _row_keys(x, y)], dtype=torch.long)
        known = idx >= 0
        phi = torch.empty(self.n_shadow, len(x), self.shadow_phi_.shape[-1])
        inside = torch.zeros(self.n_shadow, len(x), dtype=torch.bool)
        phi[:, known] = self.shadow_phi_[:, idx[known]]
        inside[:, known] = self.in_mask_[:, idx[known]]
        if (~known).any():
            new = (~known).nonzero().flatten()
            phi[:, new] = torch.stack([self._phi(m, x[new], y[new]) for m in self.shadow_models_])
        return phi, inside

    def score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Membership score per example (higher = more likely a training member of ``model``)."""
        self._check_fitted()
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise AttackError(f"x has {x.shape[0]} samples but y has {y.shape[0]} (need > 0)")
        target = self._phi(model, x, y).double()  # (N, A)
        phi, inside = self.shadow_statistics(x, y)
        phi = phi.double()
        out_mean, out_std = self._gaussian(phi, ~inside)
        if not self.online:
            z = (target - out_mean) / out_std
            return (-torch.special.log_ndtr(-z)).mean(1).float()
        missing = int((inside.sum(0) == 0).sum())
        if missing:
            raise AttackError(
                f"{missing} candidate(s) are not in the population given to fit, so no shadow "
                "model trained on them: online LiRA needs them there (or use online=False)"
            )
        in_mean, in_std = self._gaussian(phi, inside)
        llr = _normal_logpdf(target, in_mean, in_std) - _normal_logpdf(target, out_mean, out_std)
        return llr.mean(1).float()

    def _gaussian(
        self, phi: torch.Tensor, group: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-example mean and σ (N, A) of ``phi`` over the shadows in ``group``; σ is the
        pooled one with ``fixed_variance`` or where an example has fewer than 2 samples."""
        g = group.unsqueeze(-1).double()
        count = group.sum(0).double().unsqueeze(-1)  # (N, 1)
        mean = (phi * g).sum(0) / count.clamp_min(1)
        pooled = self.pooled_std_.double().expand_as(mean)
        if self.fixed_variance:
            return mean, pooled
        var = (((phi - mean) ** 2) * g).sum(0) / (count - 1).clamp_min(1)
        std = torch.where(count >= 2, var.sqrt(), pooled).clamp_min(MIN_STD)
        return mean, std
