"""DP-SGD through Opacus: a finite ε from the accountant that shrinks with more noise,
Poisson sampling only, ModuleValidator fixes, resume, clear errors."""

import math

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from bastion.defenses.privacy import check_loader, dp_train, fix_module
from bastion.defenses.recipes import parse_recipe
from bastion.defenses.runner import apply_recipe
from bastion.errors import ConfigError
from bastion.models.train import accuracy
from bastion.models.zoo import build_model


def test_epsilon_is_finite_and_shrinks_with_more_noise(digits, small_spec):
    data = digits.train.head(400)
    eps = {}
    for sigma in (0.7, 2.0):
        _, result = dp_train(
            build_model(small_spec), data, noise_multiplier=sigma, epochs=1, batch_size=32
        )
        assert result.steps == math.ceil(400 / 32) and result.delta == pytest.approx(1 / 400)
        eps[sigma] = result.epsilon
    assert 0 < eps[2.0] < eps[0.7] < math.inf


def test_target_epsilon_is_met_and_reported(digits, small_spec):
    recipe = parse_recipe([{"dp_sgd": {"target_epsilon": 2.0, "epochs": 3, "lr": 3e-3}}])
    res = apply_recipe(recipe, build_model(small_spec), digits.train)
    assert res.dp is not None and res.dp.sample_rate == pytest.approx(
        1 / math.ceil(len(digits.train) / 64)
    )
    assert 1.0 < res.dp.epsilon <= 2.0 + 0.05
    assert res.dp.epsilons == sorted(res.dp.epsilons) and len(res.dp.epsilons) == 3
    assert accuracy(res.module, digits.test.x, digits.test.y) > 0.3  # learns something
    assert not hasattr(next(res.module.parameters()), "grad_sample")  # Opacus hooks removed


def test_batchnorm_is_replaced_and_reported(digits):
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(4 * 64, 10),
    )
    fixed, fixes = fix_module(model)
    assert isinstance(fixed[1], nn.GroupNorm)
    assert fixes and "BatchNorm2d → GroupNorm" in fixes[0]
    assert isinstance(model[1], nn.BatchNorm2d)  # the caller's module is untouched
    trained, result = dp_train(
        model, digits.train.head(200), noise_multiplier=1.0, epochs=1, batch_size=32
    )
    assert result.module_fixes == fixes and isinstance(trained[1], nn.GroupNorm)


def test_resume_continues_from_the_checkpoint(digits, small_spec, tmp_path):
    data, ckpt = digits.train.head(300), tmp_path / "dp.ckpt"
    kw = {"noise_multiplier": 1.0, "epochs": 2, "batch_size": 32, "checkpoint": ckpt}
    _, first = dp_train(build_model(small_spec), data, **kw)
    assert ckpt.exists() and first.resumed_from == 0
    _, again = dp_train(build_model(small_spec), data, **kw)
    assert again.resumed_from == 2 and again.epochs_run == 2
    assert again.epsilon == pytest.approx(first.epsilon) and again.steps == first.steps


def test_weighted_sampler_is_refused():
    ds = TensorDataset(torch.zeros(10, 1), torch.zeros(10, dtype=torch.long))
    loader = DataLoader(ds, batch_size=2, sampler=WeightedRandomSampler(torch.ones(10), 4))
    with pytest.raises(ConfigError, match=r"WeightedRandomSampler breaks DP accounting.*#813"):
        check_loader(loader)
    check_loader(DataLoader(ds, batch_size=2, shuffle=True))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_epsilon": 1.0, "sampler": "weighted"}, "sampler 'weighted' breaks DP accounting"),
        ({"target_epsilon": 1.0, "noise_multiplier": 1.0}, "exactly one of target_epsilon"),
        ({"target_epsilon": math.inf}, "target_epsilon must be a finite number"),
        ({"noise_multiplier": 1.0, "delta": 2.0}, r"delta must be in \(0, 1\)"),
        ({"noise_multiplier": 1.0, "max_grad_norm": 0}, "max_grad_norm must be > 0"),
        ({"noise_multiplier": 1.0, "batch_size": 5000}, "must be smaller than the dataset"),
    ],
)
def test_bad_dp_settings_are_clear_errors(digits, small_spec, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        dp_train(build_model(small_spec), digits.train.head(100), **kwargs)


def test_recipe_sampler_refused_before_training(digits, small_spec):
    recipe = parse_recipe([{"dp_sgd": {"sampler": "shuffle"}}])
    with pytest.raises(ConfigError, match="Opacus issue #813"):
        apply_recipe(recipe, build_model(small_spec), digits.train.head(100))
