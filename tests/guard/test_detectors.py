"""Each detector separates PGD / noise inputs from clean ones, calibration realises the
target false-positive rate, and misuse raises errors that say what to do."""

from __future__ import annotations

import pytest
import torch
from sklearn.metrics import roc_auc_score

from bastion.errors import ConfigError, NotFittedError
from bastion.guard.base import conformal_threshold
from bastion.guard.detectors import (
    FeatureSqueezingDetector,
    ReconstructionDetector,
    ZScoreDetector,
    median_smooth,
    reduce_bit_depth,
)
from bastion.guard.mahalanobis import MahalanobisDetector


def auroc(clean: torch.Tensor, other: torch.Tensor) -> float:
    labels = [0] * len(clean) + [1] * len(other)
    return roc_auc_score(labels, torch.cat([clean, other]).numpy())


# floors sit below what each detector reaches on the session model (docs/benchmarks/guard.md)
FLOORS = {
    "mahalanobis": {"pgd": 0.95, "noise": 0.9},
    "zscore": {"pgd": 0.95, "noise": 0.9},
    "reconstruction": {"pgd": 0.9, "noise": 0.9},
    "squeeze": {"pgd": 0.8},
}


@pytest.mark.parametrize("name", list(FLOORS))
def test_detector_flags_attacks_more_than_clean(
    name, fitted_guard, digits, pgd_examples, noise_inputs
):
    det = fitted_guard.detectors[name]
    clean = det.score(digits.test.x[:200])
    assert clean.shape == (200,)
    sets = {"pgd": pgd_examples, "noise": noise_inputs}
    for kind, floor in FLOORS[name].items():
        assert auroc(clean, det.score(sets[kind])) >= floor, (name, kind)


def test_mahalanobis_penultimate_only_is_lee_single_layer(digits_module, digits, pgd_examples):
    det = MahalanobisDetector(digits_module, layers="penultimate").fit(
        digits.train.x, digits.train.y
    )
    assert det.views_ == [["penultimate", "flat", 0]]
    clean = det.score(digits.test.x[:200])
    assert auroc(clean, det.score(pgd_examples)) > 0.6


def test_mahalanobis_matches_slow_reference(digits_module, digits):
    """The whitened cdist form equals min_c (f-μ_c)ᵀ Σ⁻¹ (f-μ_c) computed directly."""
    x, y = digits.train.x[:300], digits.train.y[:300]
    det = MahalanobisDetector(digits_module, layers="penultimate", shrinkage=0.1, holdout=0.5).fit(
        x, y
    )
    f = det.model(digits.test.x[:20]).features.double()
    w = det.whiten_[0].double()
    precision = w @ w.T
    means = det.centers_[0].double() @ torch.linalg.pinv(w)
    ref = torch.stack([torch.einsum("nd,de,ne->n", f - mu, precision, f - mu) for mu in means], 1)
    got = det._distance(f.float(), 0)
    torch.testing.assert_close(got.double(), ref.min(1).values, rtol=1e-3, atol=1e-3)


def test_calibration_realises_target_fpr_on_fresh_data():
    """With many held-out samples the realised FPR on fresh data sits within ±0.5 points."""
    gen = torch.Generator().manual_seed(0)
    train = torch.rand(2000, 1, 4, 4, generator=gen)
    det = ZScoreDetector().fit(train)
    det.calibrate(torch.rand(5000, 1, 4, 4, generator=gen), target_fpr=0.05)
    fresh = torch.rand(20000, 1, 4, 4, generator=gen)
    assert abs(float(det.predict(fresh).float().mean()) - 0.05) < 0.005


def test_calibration_on_digits_is_close(fitted_guard, digits):
    """Thresholds set on held-out training data give roughly the target rate on the test set."""
    for name, det in fitted_guard.detectors.items():
        realised = float(det.predict(digits.test.x).float().mean())
        assert realised <= 0.04, (name, realised)


def test_score_before_fit_raises(digits_module):
    x = torch.zeros(2, 1, 8, 8)
    for det in (
        MahalanobisDetector(digits_module),
        ReconstructionDetector(),
        ZScoreDetector(),
        FeatureSqueezingDetector(digits_module),
    ):
        with pytest.raises(NotFittedError, match=r"not fitted yet: call \w+\.fit"):
            det.score(x)
        with pytest.raises(NotFittedError, match="fit"):
            det.calibrate(x, 0.01)


def test_predict_before_calibrate_raises(digits):
    det = ZScoreDetector().fit(digits.train.x)
    with pytest.raises(NotFittedError, match=r"ZScoreDetector\.calibrate"):
        det.predict(digits.test.x[:3])


def test_bad_parameters_raise(digits_module, digits):
    with pytest.raises(ConfigError, match="layers must be 'all' or 'penultimate'"):
        MahalanobisDetector(digits_module, layers="first").fit(digits.train.x[:50])
    with pytest.raises(ConfigError, match="needs the model"):
        MahalanobisDetector().fit(digits.train.x[:50])
    with pytest.raises(ConfigError, match="min_std must be > 0"):
        ZScoreDetector(min_std=0).fit(digits.train.x[:50])
    with pytest.raises(ConfigError, match="median_size must be"):
        FeatureSqueezingDetector(digits_module, median_size=1).fit(digits.train.x[:50])
    with pytest.raises(ConfigError, match=r"target_fpr must be in \(0, 1\)"):
        conformal_threshold(torch.ones(10), 1.5)


def test_squeezers_keep_shape_and_bounds():
    x = torch.rand(3, 2, 9, 9)
    assert torch.unique(reduce_bit_depth(x, 1)).tolist() in ([0.0, 1.0], [0.0], [1.0])
    sm = median_smooth(x, 3)
    assert sm.shape == x.shape and sm.min() >= x.min() and sm.max() <= x.max()
    flat = torch.full((1, 1, 5, 5), 0.5)
    flat[0, 0, 2, 2] = 1.0  # a lone spike disappears
    assert torch.equal(median_smooth(flat, 3), torch.full((1, 1, 5, 5), 0.5))


def test_reconstruction_is_seeded(digits):
    a = ReconstructionDetector(epochs=3, seed=1).fit(digits.train.x[:200])
    b = ReconstructionDetector(epochs=3, seed=1).fit(digits.train.x[:200])
    torch.testing.assert_close(a.score(digits.test.x[:10]), b.score(digits.test.x[:10]))
