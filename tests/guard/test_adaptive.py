"""The adaptive attacker, the adaptive evaluation and calibration on rows the model never
trained on.

The digits guard here is calibrated on the first half of the test split and attacked on the
second; on it non-adaptive PGD is caught almost always, the adaptive attacker (which knows
every detector and its threshold) much less often. A breast-cancer MLP with a frozen and an
integer feature checks the tabular attack space."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer
from torch import nn

from bastion.assess.probe import Members
from bastion.assess.space import AttackSpace
from bastion.data.loaders import DataOptions, bundle_from_arrays
from bastion.errors import AttackError, DataError
from bastion.guard import Guard, GuardConfig, fit_guard
from bastion.guard.adaptive import GuardScorer, adaptive_attack
from bastion.guard.calibration import choose_calibration, evaluation_rows, from_file
from bastion.guard.config import CalibrationConfig, CalibrationRecord
from bastion.guard.evaluate import evaluate_guard
from bastion.risk.evidence import load_guard_evaluation
from tests.tabular_models import train

from .conftest import fast_config


@pytest.fixture(scope="module")
def digits_guard(guard_module, digits):
    """A guard calibrated on the first half of the digits test split (``bastion train``
    provenance: the model trained on the train split)."""
    torch.manual_seed(0)
    members = Members.train_split(digits, "test: the train split is the training set")
    choice = choose_calibration(
        digits, members=members, config=CalibrationConfig(), target_fpr=0.01
    )
    guard = fit_guard(
        guard_module,
        choice.fit,
        config=fast_config(),
        calibration=choice.calibration,
        calibration_record=choice.record,
    )
    return guard


@pytest.fixture(scope="module")
def evaluation(digits_guard, guard_module, digits):
    return evaluate_guard(
        digits_guard,
        guard_module,
        digits.test,
        n=100,
        adaptive_steps=40,
        shifts=(),
        drift_windows=2,
    )


def test_adaptive_attacker_drives_detection_below_the_non_adaptive_rate(evaluation):
    na, ad = evaluation.non_adaptive, evaluation.adaptive
    assert na.status == ad.status == "measured"
    assert na.n_adversarial >= 20 and ad.n_adversarial >= 20
    assert na.detectors["guard"].tpr >= 0.8  # the detectors catch naive PGD
    assert ad.detectors["guard"].tpr <= na.detectors["guard"].tpr - 0.4
    assert ad.detectors["mahalanobis"].tpr < na.detectors["mahalanobis"].tpr
    # fooled and not flagged = an attack success: the guard buys much less robustness
    assert ad.guarded_robust_accuracy <= na.guarded_robust_accuracy - 0.15
    assert ad.guarded_robust_accuracy >= ad.robust_accuracy  # a flag can only help
    assert ad.attack["eps"] == na.attack["eps"] == 0.1 and ad.attack["norm"] == "inf"
    assert ad.attack["steps"] == 40 and ad.attack["restarts"] == 2
    assert "BPDA" in ad.gradients["squeeze"] and "exact" in ad.gradients["mahalanobis"]
    # the calibration rows are not evaluated: the realised FPR is on unseen rows
    assert evaluation.calibration is not None and evaluation.calibration.n == 225
    assert any("are left out" in note for note in evaluation.notes)


def test_the_evaluation_json_labels_every_figure(evaluation, tmp_path):
    doc = json.loads(evaluation.model_dump_json())
    assert {"non_adaptive", "adaptive"} <= set(doc) and "detectors" not in doc
    assert doc["calibration"]["source"] == "test-split"
    assert doc["calibration"]["disjoint_from_training"] is True
    path = tmp_path / "ev.json"
    path.write_text(evaluation.model_dump_json())
    rates, why = load_guard_evaluation(path).adaptive_rates()
    assert not why and rates["guard"].tpr == evaluation.adaptive.detectors["guard"].tpr


def test_adaptive_points_stay_in_the_ball_and_evade_for_real(digits_guard, guard_module, digits):
    x, y = digits.test.x[300:340], digits.test.y[300:340]
    space = AttackSpace.build(digits.test.input_spec)
    res = adaptive_attack(
        digits_guard,
        guard_module,
        x,
        y,
        space=space,
        eps=0.1,
        steps=30,
        generator=torch.Generator().manual_seed(0),
    )
    assert float((res.x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(res.x_adv.min()) >= 0.0 and float(res.x_adv.max()) <= 1.0
    win = res.misclassified & res.evaded
    assert int(win.sum()) >= 5
    # re-scored by the guard itself: no detector fires on the successes, the model is fooled
    scores = digits_guard.scores(res.x_adv[win])
    for name, thr in digits_guard.thresholds.items():
        assert bool((scores[name] <= thr).all()), name
    with torch.no_grad():
        assert bool((guard_module(res.x_adv[win]).argmax(1) != y[win]).all())


def test_differentiable_scores_match_the_guard_and_squeeze_has_a_gradient(
    digits_guard, guard_module, digits
):
    x = digits.test.x[:16].clone().requires_grad_(True)
    scorer = GuardScorer(digits_guard, guard_module)
    with torch.enable_grad():
        _, scores = scorer(x)
    real = digits_guard.scores(x.detach())
    for name, s in scores.items():
        torch.testing.assert_close(s.detach().amax(1), real[name], rtol=1e-4, atol=1e-4)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(scores["squeeze"].sum(), x)
    assert float(grad.abs().sum()) > 0  # bit-depth rounding alone would give zero (BPDA)


def test_bad_arguments_are_refused(digits_guard, guard_module, digits):
    space = AttackSpace.build(digits.test.input_spec)
    x, y = digits.test.x[:2], digits.test.y[:2]
    with pytest.raises(AttackError, match="unknown adaptive method 'fgsm'"):
        adaptive_attack(digits_guard, guard_module, x, y, space=space, eps=0.1, method="fgsm")
    with pytest.raises(AttackError, match="steps must be an integer >= 1"):
        adaptive_attack(digits_guard, guard_module, x, y, space=space, eps=0.1, steps=0)


@pytest.fixture(scope="module")
def tabular():
    """Breast cancer with feature 0 frozen and feature 3 whole numbers; a small MLP."""
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float32), raw.target
    x[:, 3] = np.round(x[:, 3])
    opts = DataOptions(frozen=[0], integer=[3])
    bundle = bundle_from_arrays("bc", "sklearn breast cancer", {"x": x, "y": y}, 0, opts)
    torch.manual_seed(0)
    xt = bundle.train.x
    mean, std = xt.mean(0), xt.std(0) + 1e-6

    class Standardize(nn.Module):
        def forward(self, v: torch.Tensor) -> torch.Tensor:
            return (v - mean) / std

    model = nn.Sequential(Standardize(), nn.Linear(30, 32), nn.ReLU(), nn.Linear(32, 2))
    return bundle, train(model, xt.numpy(), bundle.train.y.numpy())


def test_tabular_attack_respects_relative_eps_frozen_and_integer_features(tabular):
    bundle, model = tabular
    cfg = GuardConfig.model_validate({"detectors": {"reconstruction": {"epochs": 30}}})
    choice = choose_calibration(bundle, members=None, config=CalibrationConfig(), target_fpr=0.05)
    guard = fit_guard(
        model,
        choice.fit,
        config=cfg,
        target_fpr=0.05,
        calibration=choice.calibration,
        calibration_record=choice.record,
    )
    test, _ = evaluation_rows(bundle.test, choice.record)
    x, y = test.x, test.y
    space = AttackSpace.build(bundle.test.input_spec)
    assert space.mode == "relative"
    res = adaptive_attack(guard, model, x, y, space=space, eps=0.1, steps=20)
    width = bundle.test.input_spec.upper_tensor() - bundle.test.input_spec.lower_tensor()
    assert bool(((res.x_adv - x).abs() <= 0.1 * width * (1 + 1e-5) + 1e-6).all())
    assert torch.equal(res.x_adv[:, 0], x[:, 0])  # frozen
    assert torch.equal(res.x_adv[:, 3], res.x_adv[:, 3].round())  # whole
    ev = evaluate_guard(guard, model, test, adaptive_steps=20, shifts=(), drift_windows=2)
    assert ev.adaptive.status == "measured" and ev.adaptive.attack["eps_mode"] == "relative"
    assert ev.adaptive.guarded_robust_accuracy <= ev.non_adaptive.guarded_robust_accuracy


def test_calibration_split_follows_what_is_known_about_training_rows(digits):
    cfg = CalibrationConfig()
    unknown = choose_calibration(digits, members=None, config=cfg, target_fpr=0.01).record
    assert unknown.source == "test-split" and unknown.disjoint_from_training is None
    assert "unknown" in unknown.how_known and unknown.n == 225
    whole = Members.train_split(digits, "bastion train provenance")
    known = choose_calibration(digits, members=whole, config=cfg, target_fpr=0.01).record
    assert known.source == "test-split" and known.disjoint_from_training is True
    # trained on 800 of the 1347 train rows: the other 547 calibrate, no test row is used
    mask = torch.zeros(len(digits.train), dtype=torch.bool)
    mask[:800] = True
    part = Members(mask, torch.zeros(len(digits.test), dtype=torch.bool), "--members f")
    choice = choose_calibration(digits, members=part, config=cfg, target_fpr=0.01)
    assert choice.record.source == "train-non-members" and choice.record.n == 547
    assert choice.record.disjoint_from_training is True and len(choice.fit) == 800
    assert set(choice.record.rows).isdisjoint(digits.train.rows[:800].tolist())
    # the old behaviour stays available, and says it is not disjoint
    hold = CalibrationConfig(split="fit-holdout")
    held = choose_calibration(digits, members=whole, config=hold, target_fpr=0.01).record
    assert held.source == "fit-holdout" and held.disjoint_from_training is False


def test_the_guard_saves_its_calibration_record(digits_guard, guard_module, tmp_path):
    digits_guard.save(tmp_path)
    doc = json.loads((tmp_path / "guard.json").read_text())
    rec = CalibrationRecord.model_validate(doc["meta"]["calibration"])
    assert rec.source == "test-split" and rec.n == 225 and len(rec.rows) == 225
    assert rec.disjoint_from_training is True and rec.drift_reference == "the calibration rows"
    back = Guard.load(tmp_path, guard_module)
    assert back.meta["calibration"] == doc["meta"]["calibration"]


def test_a_guard_without_a_calibration_set_records_that(guard_module, digits):
    cfg = fast_config()
    cfg.detectors.mahalanobis.enabled = False
    cfg.detectors.reconstruction.enabled = False
    guard = fit_guard(guard_module, digits.train.head(300), config=cfg, target_fpr=0.05)
    rec = guard.meta["calibration"]
    assert rec["source"] == "fit-holdout" and rec["disjoint_from_training"] is None


def test_a_calibration_file_drops_rows_equal_to_training_rows(digits):
    copy = bundle_from_arrays(
        "cal",
        "test arrays",
        {
            "x": torch.cat([digits.test.x[:50], digits.train.x[:10]]).numpy(),
            "y": torch.cat([digits.test.y[:50], digits.train.y[:10]]).numpy(),
        },
        0,
        DataOptions(modality="image", lower=[0.0], upper=[1.0]),
    )
    whole = Members.train_split(digits, "bastion train provenance")
    choice = from_file(digits, copy, whole, "cal.npz")
    assert choice.record.source == "file" and choice.record.n == 50
    assert choice.record.excluded_training_rows == 10
    assert choice.record.disjoint_from_training is True
    with pytest.raises(DataError, match="every row is also a training row"):
        only = {"x": digits.train.x[:20].numpy(), "y": digits.train.y[:20].numpy()}
        opts = DataOptions(modality="image", lower=[0.0], upper=[1.0])
        from_file(digits, bundle_from_arrays("t", "t", only, 0, opts), whole, "t.npz")
