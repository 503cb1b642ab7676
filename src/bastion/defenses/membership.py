"""How much a training recipe leaks membership: leave-one-out LiRA over recipe-trained models.

Carlini et al. 2022 ("Membership Inference Attacks From First Principles", §V) evaluate an
attack by training many models on random halves of a population and attacking each one in
turn with the others as shadow models. Doing that with the *hardening recipe* (DP-SGD,
adversarial training, ...) for every model measures the recipe's leakage with shadows that
match the target's training, which is what the attack assumes: attacking a DP-SGD model
with naturally trained shadows would understate what a careful attacker achieves.

Scores are the online likelihood ratio of the logit-scaled confidence
φ = log(p_y / (1 − p_y)) under per-example Gaussians fitted on the other models' IN and
OUT values, with a shared (pooled) variance per group: the paper's advice with few models.
Both groups use the same number of models per example (one is dropped from the larger
group), so a recipe that leaks nothing scores AUC 0.5 in expectation.
"""

from __future__ import annotations

import logging
import math

import torch
from torch import nn

from bastion.attacks.inference import logit_confidence, predict_logits
from bastion.data.dataset import Dataset
from bastion.defenses.recipes import Recipe
from bastion.defenses.runner import apply_recipe
from bastion.errors import ConfigError, NotFittedError

log = logging.getLogger(__name__)


class RecipeLiRA:
    """Leave-one-out online LiRA against models trained by ``recipe`` on balanced random
    halves of a population (every example is IN for half of the ``n_shadow`` models).

    Learned attributes: ``in_mask_`` (n_shadow, N) bool, ``phi_`` (n_shadow, N) each
    model's confidence on every population example, ``epsilons_`` the ε each DP model
    spent (empty for non-DP recipes)."""

    def __init__(
        self,
        recipe: Recipe,
        *,
        n_shadow: int = 8,
        eps: float = 0.1,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ) -> None:
        self.recipe = recipe
        self.n_shadow = n_shadow
        self.eps = eps
        self.seed = seed
        self.device = device

    def fit(self, population: Dataset, template: nn.Module) -> RecipeLiRA:
        """Train ``n_shadow`` models of ``template``'s architecture with the recipe."""
        if self.n_shadow < 3:
            raise ConfigError(f"leave-one-out LiRA needs n_shadow >= 3, got {self.n_shadow}")
        n = len(population)
        gen = torch.Generator().manual_seed(self.seed)
        order = torch.rand(self.n_shadow, n, generator=gen).argsort(0)
        self.in_mask_ = order < self.n_shadow // 2
        phis, self.epsilons_ = [], []
        for k in range(self.n_shadow):
            idx = self.in_mask_[k].nonzero().flatten()
            res = apply_recipe(
                self.recipe,
                template,
                population.subset(idx, split="shadow"),
                eps=self.eps,
                seed=self.seed * 7919 + k,
                device=self.device,
            )
            if res.dp is not None:
                self.epsilons_.append(res.dp.epsilon)
            model = res.module.to(self.device).eval()
            logits = predict_logits(model, population.x.to(self.device))
            phis.append(logit_confidence(logits, population.y.to(self.device)).cpu())
            log.info("recipe LiRA: model %d/%d trained", k + 1, self.n_shadow)
        self.phi_ = torch.stack(phis).double()
        return self

    def evaluate(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Attack each model with the others as shadows. Returns ``(scores, is_member)``
        over all (model, example) pairs: n_shadow × N of each."""
        if not hasattr(self, "phi_"):
            raise NotFittedError(self)
        scores, members = [], []
        for k in range(self.n_shadow):
            others = [j for j in range(self.n_shadow) if j != k]
            phi, inside = self.phi_[others], self.in_mask_[others]
            use = _balanced(inside)
            mu_in, sd_in = _group(phi, inside & use)
            mu_out, sd_out = _group(phi, ~inside & use)
            target = self.phi_[k]
            llr = _logpdf(target, mu_in, sd_in) - _logpdf(target, mu_out, sd_out)
            # an example with no IN (or OUT) model among the others: fall back to the offline test
            offline = -torch.special.log_ndtr(-(target - mu_out) / sd_out)
            missing = (inside.sum(0) == 0) | ((~inside).sum(0) == 0)
            scores.append(torch.where(missing, offline, llr).float())
            members.append(self.in_mask_[k])
        return torch.cat(scores), torch.cat(members)


def _balanced(inside: torch.Tensor) -> torch.Tensor:
    """Models to use per example so that IN and OUT counts are equal: leaving the target out
    leaves one group a model short, and unequal counts bias the ratio (the group with fewer
    models has a noisier mean, which lowers its likelihood even when nothing leaks)."""
    use = torch.ones_like(inside)
    n_in, n_out = inside.sum(0), (~inside).sum(0)
    for group, extra in ((inside, n_in > n_out), (~inside, n_out > n_in)):
        first = (group.long() * (torch.arange(len(group), 0, -1).unsqueeze(1))).argmax(0)
        cols = extra.nonzero().flatten()
        use[first[cols], cols] = False
    return use


def _group(phi: torch.Tensor, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example mean over the models in ``group`` and the pooled within-example std."""
    g = group.double()
    count = g.sum(0)
    mean = (phi * g).sum(0) / count.clamp_min(1)
    dof = float((count - 1).clamp_min(0).sum())
    var = float((((phi - mean) ** 2) * g).sum()) / dof if dof > 0 else float(phi.var())
    return mean, torch.full_like(mean, max(math.sqrt(var), 1e-4))


def _logpdf(v: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    return -0.5 * ((v - mean) / std) ** 2 - std.log() - 0.5 * math.log(2 * math.pi)
