"""The Robust Membership Inference Attack (RMIA) of Zarifzadeh, Liu and Shokri 2024,
"Low-Cost High-Power Membership Inference Attacks" (ICML), offline by default.

RMIA tests the likelihood ratio of the target model θ on a candidate x against its ratio on
population samples z that were drawn independently of θ's training set:

    LR(x) = Pr(x | θ) / Pr(x),     score(x) = Pr_z[ LR(x) / LR(z) > γ ]    (γ = 1 default)

where Pr(x | θ) is θ's softmax probability of x's true label and Pr(x), the probability
averaged over models trained on population data, is estimated with a few reference models:

- offline (``online=False``, the default, the paper's low-cost setting): only reference
  models that did *not* train on x are used. Their mean p_out(x) stands for the models
  without x; the models that would have trained on x are filled in with the paper's linear
  approximation p_in ≈ a · p_out + (1 − a), so

      Pr(x) = ½ (p_in + p_out) ≈ ½ ((1 + a) · p_out(x) + (1 − a)).

  ``offline_a=None`` estimates a from the reference models themselves: with two or more of
  them every population row has IN and OUT confidences, and a is the least-squares slope
  of 1 − p_in on 1 − p_out through (1, 1), clipped to [0, 1] (a = 1: training on x changes
  nothing; a = 0: a model always fits its training points). With one reference model there
  are no IN/OUT pairs, so a falls back to ``DEFAULT_A`` (0.3, the reference
  implementation's default) unless one is given. A population row that the only reference
  model trained on gets p_out from inverting the same linear relation, as the reference
  implementation does.
- online (``online=True``): Pr(x) is the plain mean over all reference models, half of which
  trained on x (balanced halves), for candidates in the population given to ``fit``.

Protocol (the paper's §3 and its released code, re-implemented here in torch):

1. ``fit(population, build_model)`` trains ``n_reference`` reference models with the target's
   recipe (``bastion.models.train.train_model``). With two or more, their training sets are
   balanced random halves of the population, as for LiRA's shadows: every row is IN
   ⌊n_reference/2⌋ of them and OUT of the rest, so each row has at least one OUT model. One
   reference model trains on a random half. Their log-probabilities on every population row
   are stored, and ``n_z`` population rows (all by default) are kept as the samples z.
2. ``score(model, x, y)`` queries the target on x and on the z's and returns, for each x, the
   fraction of z with LR(x)/LR(z) > γ, in [0, 1] (higher = more likely a member). The z's
   get Pr(z) from the same estimator as the candidates (their OUT models), so both sides of
   the ratio are estimated alike. Candidates outside the population are OUT of every
   reference model (offline only).

For a fixed target and fixed z's the score is a monotone function of LR(x) (the empirical
CDF of LR(z) at LR(x)/γ), so its ROC curve is LR(x)'s, resolved to 1/|z|: when the
candidates are population rows and z is the whole population, distinct ratios get
distinct scores.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import torch
from torch import nn

from bastion.attacks.lira import _row_keys
from bastion.data.dataset import Dataset
from bastion.errors import AttackError, NotFittedError
from bastion.models.predict import predict_logits
from bastion.models.train import train_model

log = logging.getLogger(__name__)
DEFAULT_A = 0.3
MIN_PROB = 1e-12


def true_label_log_prob(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """log softmax(model(x))[y] per example, in float64 on the CPU (exact near p = 1)."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    logits = predict_logits(model, x.to(device)).double().cpu()
    if logits.ndim != 2 or logits.shape[0] != y.shape[0]:
        raise AttackError(
            f"the model returned logits of shape {tuple(logits.shape)} for {len(y)} rows"
        )
    return logits.log_softmax(1).gather(1, y.cpu().long().view(-1, 1)).squeeze(1)


def _log_mean_exp(logp: torch.Tensor, group: torch.Tensor) -> torch.Tensor:
    """log of the mean of exp(logp) over the models in ``group`` (k, N); −inf where empty."""
    masked = logp.masked_fill(~group, float("-inf"))
    count = group.sum(0).double()
    return torch.logsumexp(masked, 0) - count.clamp_min(1).log()


def estimate_offline_a(logp: torch.Tensor, in_mask: torch.Tensor) -> float:
    """Least-squares slope a of (1 − p_in) = a (1 − p_out) over the rows that have IN and OUT
    reference models (p_in, p_out: mean probabilities over those models), clipped to [0, 1]."""
    both = in_mask.any(0) & (~in_mask).any(0)
    if not both.any():
        raise AttackError("no population row has both IN and OUT reference models")
    p_in = _log_mean_exp(logp, in_mask)[both].exp()
    p_out = _log_mean_exp(logp, ~in_mask)[both].exp()
    u, v = 1.0 - p_in, 1.0 - p_out
    denom = float((v * v).sum())
    if denom <= 0.0:
        return 1.0  # every OUT probability is 1: nothing to correct
    return min(1.0, max(0.0, float((u * v).sum()) / denom))


class RMIA:
    """RMIA (Zarifzadeh et al. 2024), offline by default. Parameters are stored unchanged;
    ``fit`` trains the reference models.

    Learned attributes: ``reference_models_`` (list of modules), ``in_mask_``
    (n_reference, N) bool, ``reference_logp_`` (n_reference, N) float64 log-probabilities of
    the true label on the population, ``a_`` (the offline a in use) and ``a_source_`` (how
    it was set), ``z_x_``/``z_y_`` the population samples z and ``z_index_`` their rows.
    """

    def __init__(
        self,
        *,
        n_reference: int = 2,
        online: bool = False,
        offline_a: float | None = None,
        gamma: float = 1.0,
        n_z: int | None = None,
        epochs: int = 10,
        lr: float = 1e-3,
        batch_size: int = 64,
        val_fraction: float = 0.0,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.n_reference = n_reference
        self.online = online
        self.offline_a = offline_a
        self.gamma = gamma
        self.n_z = n_z
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.seed = seed
        self.device = device

    def get_params(self) -> dict[str, object]:
        """The constructor parameters (scikit-learn style)."""
        names = (
            "n_reference",
            "online",
            "offline_a",
            "gamma",
            "n_z",
            "epochs",
            "lr",
            "batch_size",
            "val_fraction",
            "seed",
            "device",
        )
        return {n: getattr(self, n) for n in names}

    def _check_params(self) -> None:
        k = self.n_reference
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise AttackError(f"RMIA needs n_reference >= 1 reference models, got {k!r}")
        a = self.offline_a
        if a is not None and not 0.0 <= float(a) <= 1.0:
            raise AttackError(f"offline_a must lie in [0, 1], got {a}")
        if a is not None and k == 1 and float(a) == 0.0:
            raise AttackError(
                "offline_a = 0 says p_in = 1 whatever p_out is, so one reference model cannot "
                "stand in for the models without x: give offline_a > 0 or more reference models"
            )
        if not (
            isinstance(self.gamma, int | float) and math.isfinite(self.gamma) and self.gamma > 0
        ):
            raise AttackError(f"gamma must be a positive number, got {self.gamma!r}")
        if self.n_z is not None and (not isinstance(self.n_z, int) or self.n_z < 1):
            raise AttackError(f"n_z must be None (all population rows) or >= 1, got {self.n_z!r}")
        if self.online and k < 2:
            raise AttackError(
                "online RMIA averages IN and OUT reference models: give n_reference >= 2"
            )

    # ------------------------------------------------------------------ fit
    def fit(self, population: Dataset, build_model: Callable[[], nn.Module]) -> RMIA:
        """Train ``n_reference`` reference models (``build_model()`` each) on random halves of
        ``population`` (balanced when there are two or more) and record their log-probabilities
        of the true label on every population row."""
        self._check_params()
        n, k = len(population), self.n_reference
        if n < 4:
            raise AttackError(f"the population has {n} rows: RMIA needs at least 4")
        gen = torch.Generator().manual_seed(self.seed)
        if k >= 2:
            in_mask = torch.rand(k, n, generator=gen).argsort(0) < k // 2
        else:
            in_mask = (torch.randperm(n, generator=gen) < n // 2).unsqueeze(0)
        models = []
        for j in range(k):
            torch.manual_seed(self.seed * 7907 + j)
            model = build_model()
            train_model(
                model,
                population.subset(in_mask[j].nonzero().flatten(), split="reference"),
                epochs=self.epochs,
                batch_size=self.batch_size,
                lr=self.lr,
                val_fraction=self.val_fraction,
                seed=self.seed * 7907 + j,
                device=self.device,
                description=f"RMIA reference model {j + 1}/{k}",
            )
            model.eval()
            models.append(model)
            log.info("RMIA: trained reference model %d/%d", j + 1, k)
        self.reference_models_ = models
        self.in_mask_ = in_mask
        self.reference_logp_ = torch.stack(
            [true_label_log_prob(m, population.x, population.y) for m in models]
        )
        self.row_index_ = {key: i for i, key in enumerate(_row_keys(population.x, population.y))}
        if self.offline_a is not None:
            self.a_, self.a_source_ = float(self.offline_a), "given"
        elif k >= 2:
            self.a_ = estimate_offline_a(self.reference_logp_, in_mask)
            self.a_source_ = f"least squares over the {n} population rows' IN/OUT probabilities"
        else:
            self.a_ = DEFAULT_A
            self.a_source_ = (
                "the reference implementation's default (one model has no IN/OUT pairs)"
            )
        z_gen = torch.Generator().manual_seed(self.seed + 1)
        count = n if self.n_z is None else min(self.n_z, n)
        self.z_index_ = torch.randperm(n, generator=z_gen)[:count].sort().values
        self.z_x_ = population.x[self.z_index_]
        self.z_y_ = population.y[self.z_index_]
        return self

    def variant(
        self,
        *,
        online: bool | None = None,
        offline_a: float | None = None,
        gamma: float | None = None,
    ) -> RMIA:
        """A copy with another scoring variant sharing these fitted reference models (online
        or offline, a fixed a, another γ only change ``score``)."""
        self._check_fitted()
        params = self.get_params()
        if online is not None:
            params["online"] = online
        if offline_a is not None:
            params["offline_a"] = offline_a
        if gamma is not None:
            params["gamma"] = gamma
        other = RMIA(**params)  # type: ignore[arg-type]
        other._check_params()
        for name, value in vars(self).items():
            if name.endswith("_"):
                setattr(other, name, value)
        if offline_a is not None:
            other.a_, other.a_source_ = float(offline_a), "given"
        return other

    # ---------------------------------------------------------------- score
    def _check_fitted(self) -> None:
        if not hasattr(self, "reference_models_"):
            raise NotFittedError(self)

    def reference_statistics(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probabilities (n_reference, N) on (x, y) and the IN mask: stored values
        for population rows, fresh forward passes (all OUT) for other rows."""
        self._check_fitted()
        idx = torch.tensor([self.row_index_.get(k, -1) for k in _row_keys(x, y)], dtype=torch.long)
        known = idx >= 0
        logp = torch.empty(self.n_reference, len(x), dtype=torch.float64)
        inside = torch.zeros(self.n_reference, len(x), dtype=torch.bool)
        logp[:, known] = self.reference_logp_[:, idx[known]]
        inside[:, known] = self.in_mask_[:, idx[known]]
        if (~known).any():
            new = (~known).nonzero().flatten()
            logp[:, new] = torch.stack(
                [true_label_log_prob(m, x[new], y[new]) for m in self.reference_models_]
            )
        return logp, inside

    def log_marginal(self, logp: torch.Tensor, inside: torch.Tensor) -> torch.Tensor:
        """log Pr(x) (N,) from reference log-probabilities and IN mask (see the module doc)."""
        if self.online:
            missing = int((inside.sum(0) == 0).sum())
            if missing:
                raise AttackError(
                    f"{missing} row(s) are not in the population given to fit, so no reference "
                    "model trained on them: online RMIA needs them there (or use online=False)"
                )
            return torch.logsumexp(logp, 0) - math.log(logp.shape[0])
        a = self.a_
        out = ~inside
        log_p_out = _log_mean_exp(logp, out)
        no_out = out.sum(0) == 0
        if no_out.any():  # only with one reference model: invert p_in = a p_out + (1 - a)
            p_in = _log_mean_exp(logp, inside)[no_out].exp()
            p_hat = ((p_in - (1.0 - a)) / a).clamp(MIN_PROB, 1.0)
            log_p_out[no_out] = p_hat.log()
        # log(½((1 + a) p_out + (1 − a))), stable for p_out → 0 and for a → 1
        first = math.log1p(a) + log_p_out
        if a >= 1.0:
            return first - math.log(2.0)
        return torch.logaddexp(first, torch.full_like(first, math.log1p(-a))) - math.log(2.0)

    def log_ratio(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """log LR(x) = log Pr(x | θ) − log Pr(x) (N,), float64."""
        logp, inside = self.reference_statistics(x, y)
        return true_label_log_prob(model, x, y) - self.log_marginal(logp, inside)

    def score(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Membership score per example in [0, 1]: the fraction of population samples z with
        LR(x)/LR(z) > γ (higher = more likely a training member of ``model``)."""
        self._check_fitted()
        self._check_params()
        if x.shape[0] != y.shape[0] or x.shape[0] == 0:
            raise AttackError(f"x has {x.shape[0]} samples but y has {y.shape[0]} (need > 0)")
        ratio_x = self.log_ratio(model, x, y)
        z_logp = self.reference_logp_[:, self.z_index_]
        z_inside = self.in_mask_[:, self.z_index_]
        ratio_z = true_label_log_prob(model, self.z_x_, self.z_y_) - self.log_marginal(
            z_logp, z_inside
        )
        if not (torch.isfinite(ratio_x).all() and torch.isfinite(ratio_z).all()):
            raise AttackError("the target's or a reference model's probabilities are not finite")
        # LR(x)/LR(z) > γ  ⇔  log LR(z) < log LR(x) − log γ: count with a sorted search
        sorted_z = ratio_z.sort().values
        count = torch.searchsorted(sorted_z, ratio_x - math.log(self.gamma), side="left")
        return (count.double() / len(sorted_z)).float()
