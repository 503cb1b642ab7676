"""Sanitization: spectral signatures and activation clustering as estimators; on a BadNets
set on digits they find most poisoned rows."""

import pytest
import torch

from bastion.attacks.poisoning import backdoor_success_rate
from bastion.defenses.recipes import parse_recipe
from bastion.defenses.runner import apply_recipe, natural_trainer
from bastion.defenses.sanitize import (
    ActivationClustering,
    SpectralSignatures,
    extract_features,
    flag_quality,
    sanitize,
)
from bastion.errors import ConfigError, NotFittedError


def _planted(n=400, d=16, k=20, seed=0):
    """Two classes of Gaussian features; ``k`` rows of class 1 shifted along one direction."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.arange(n) % 2
    poisoned = (y == 1).nonzero().flatten()[:k]
    x[poisoned, 3] += 6.0
    return x, y, poisoned


def test_spectral_signatures_flag_the_planted_direction():
    x, y, poisoned = _planted()
    ss = SpectralSignatures(expected_rate=0.1, removal_factor=1.5).fit(x, y)
    q = flag_quality(ss.flagged_, poisoned)
    assert q.recall == 1.0 and q.n_flagged == 2 * 30  # 15 % of each class of 200
    assert ss.directions_[1][3].abs() > 0.9  # the top singular direction is the planted one
    assert ss.score(x[poisoned], y[poisoned]).min() > ss.score(x[:50:2], y[:50:2]).median()


def test_activation_clustering_flags_the_small_cluster():
    x, y, poisoned = _planted()
    ac = ActivationClustering(n_components=4).fit(x, y)
    q = flag_quality(ac.flagged_, poisoned)
    assert q.recall == 1.0 and q.precision == 1.0
    assert ac.flagged_[y == 0].sum() == 0 and ac.silhouettes_[1] > ac.silhouettes_[0]
    assert (ac.score(x[poisoned], y[poisoned]) > 0).all()


def test_estimators_need_fit_and_valid_parameters():
    x, y, _ = _planted(n=40)
    with pytest.raises(
        NotFittedError, match=r"SpectralSignatures is not fitted yet: call SpectralSignatures.fit"
    ):
        SpectralSignatures().score(x, y)
    with pytest.raises(NotFittedError, match="ActivationClustering is not fitted yet"):
        ActivationClustering().score(x, y)
    with pytest.raises(ConfigError, match=r"expected_rate must be in \(0, 1\)"):
        SpectralSignatures(expected_rate=1.5).fit(x, y)
    with pytest.raises(ConfigError, match=r"size_threshold must be in \(0, 0.5\)"):
        ActivationClustering(size_threshold=0.7).fit(x, y)
    with pytest.raises(ConfigError, match=r"features must have shape \(N, D\)"):
        SpectralSignatures().fit(x.view(40, 4, 4), y)


def test_flag_quality_arithmetic():
    flagged = torch.tensor([True, True, False, False, True])
    q = flag_quality(flagged, torch.tensor([0, 2]))
    assert (q.true_positives, q.n_flagged, q.n_poisoned) == (1, 3, 2)
    assert q.precision == pytest.approx(1 / 3) and q.recall == pytest.approx(0.5)


def test_sanitization_finds_most_badnets_poisons_on_digits(digits, badnets, backdoored, small_spec):
    assert (
        backdoor_success_rate(backdoored, digits.test.x, digits.test.y, target=0, patch_size=3)
        > 0.8
    )
    recipe = parse_recipe("standard").training
    trainer = natural_trainer(backdoored, recipe.model_copy(update={"epochs": 8}), seed=0)
    res = sanitize(
        backdoored, badnets.dataset, method="activation", train_fn=trainer, poisoned=badnets.indices
    )
    assert res.quality.recall >= 0.9, res.quality
    assert res.quality.precision > 0.2  # far above the 5 % base rate
    assert 0 in res.poisoned_classes and res.reclassification[0] < 0.5
    assert len(res.kept) == len(badnets.dataset) - res.n_flagged


def test_sanitize_then_retrain_removes_the_backdoor(digits, badnets, backdoored):
    recipe = parse_recipe([{"sanitize": {}}, {"standard": {"epochs": 8}}])
    res = apply_recipe(
        recipe, backdoored, badnets.dataset, feature_model=backdoored, poisoned=badnets.indices
    )
    asr = backdoor_success_rate(res.module, digits.test.x, digits.test.y, target=0, patch_size=3)
    assert asr < 0.1 and res.sanitize.quality.recall >= 0.9
    assert res.notes and "dropped" in res.notes[0]


def test_unknown_method_and_features(digits, backdoored):
    with pytest.raises(ConfigError, match="unknown sanitize method 'pca': choose from spectral"):
        sanitize(backdoored, digits.train.head(50), method="pca")
    assert extract_features(backdoored, digits.train.x[:5]).shape == (5, 64)
