"""Leave-one-out LiRA over recipe-trained models: natural training of a small model on few
examples leaks membership; the estimator contract holds."""

import pytest

from bastion.attacks.inference import membership_metrics
from bastion.defenses.membership import RecipeLiRA
from bastion.defenses.recipes import parse_recipe
from bastion.errors import ConfigError, NotFittedError
from bastion.models.zoo import build_model


def test_overfit_recipe_leaks_membership(digits, small_spec):
    population = digits.train.head(80)
    recipe = parse_recipe([{"standard": {"epochs": 40, "val_fraction": 0, "lr": 3e-3}}])
    lira = RecipeLiRA(recipe, n_shadow=6, seed=0).fit(population, build_model(small_spec))
    assert lira.in_mask_.sum(0).eq(3).all()  # every example IN exactly half of the models
    scores, members = lira.evaluate()
    assert scores.shape == members.shape == (6 * 80,)
    m = membership_metrics(scores, members, fprs=[0.01])
    assert m.auc > 0.65, m.auc  # the per-example IN/OUT statistics beat chance clearly


def test_recipe_lira_contract(small_spec):
    recipe = parse_recipe("standard")
    with pytest.raises(NotFittedError, match="RecipeLiRA is not fitted yet"):
        RecipeLiRA(recipe).evaluate()
    with pytest.raises(ConfigError, match="needs n_shadow >= 3"):
        RecipeLiRA(recipe, n_shadow=2).fit(None, build_model(small_spec))


def test_no_leakage_scores_chance():
    """If confidences do not depend on membership, the balanced leave-one-out ratio is
    unbiased: AUC ≈ 0.5 (unequal IN/OUT counts would push members below chance)."""
    import torch

    lira = RecipeLiRA(parse_recipe("standard"), n_shadow=8)
    g = torch.Generator().manual_seed(0)
    n = 3000
    lira.in_mask_ = torch.rand(8, n, generator=g).argsort(0) < 4
    lira.phi_ = (torch.randn(8, n, generator=g) + 3 * torch.randn(1, n, generator=g)).double()
    scores, members = lira.evaluate()
    assert membership_metrics(scores, members).auc == pytest.approx(0.5, abs=0.01)
