"""Adversarial training: more robust than the parent, TRADES β=0 is natural training, the
catastrophic-overfitting guard, the training-time adversaries stay in the ball."""

import pytest
import torch

from bastion.defenses import adversarial as adv
from bastion.defenses.recipes import parse_recipe
from bastion.defenses.runner import apply_recipe
from bastion.models.train import train_model


@pytest.mark.parametrize(
    "step",
    [
        {"fast_at": {"epochs": 3, "lr": 2e-3}},
        {"pgd_at": {"epochs": 2, "steps": 3}},
        {"trades": {"epochs": 2, "steps": 3}},
    ],
    ids=["fast_at", "pgd_at", "trades"],
)
def test_adversarially_trained_child_is_more_robust_than_parent(digits, digits_module, step):
    x, y = digits.test.x[:200], digits.test.y[:200]
    before = adv.robust_accuracy(digits_module, x, y, eps=0.1, steps=10)
    ((name, params),) = step.items()
    recipe = parse_recipe([{name: {**params, "init": "parent", "select_n": 128}}])
    child = apply_recipe(recipe, digits_module, digits.train, eps=0.1)
    after = adv.robust_accuracy(child.module, x, y, eps=0.1, steps=10)
    assert after > before + 0.08, (before, after)
    # model selection ran on robust validation accuracy, one score per epoch
    assert len(child.train.val_score) == params["epochs"]
    assert child.train.val_score[child.train.best_epoch] == max(child.train.val_score)
    # the parent itself was not touched
    assert adv.robust_accuracy(digits_module, x, y, eps=0.1, steps=10) == before


def test_trades_beta_zero_is_natural_training(digits, digits_module):
    sub = digits.train.head(400)
    natural = apply_recipe(parse_recipe([{"standard": {"epochs": 2}}]), digits_module, sub)
    trades = apply_recipe(
        parse_recipe([{"trades": {"epochs": 2, "beta": 0, "steps": 2, "select": "clean"}}]),
        digits_module,
        sub,
        eps=0.1,
    )
    assert trades.train.train_loss == pytest.approx(natural.train.train_loss, rel=1e-5)
    for a, b in zip(natural.module.parameters(), trades.module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    beta6 = apply_recipe(
        parse_recipe([{"trades": {"epochs": 2, "beta": 6, "steps": 2, "select": "clean"}}]),
        digits_module,
        sub,
        eps=0.1,
    )
    assert beta6.train.train_loss[0] > natural.train.train_loss[0]


def test_training_adversaries_stay_in_the_ball(digits, digits_module):
    x, y = digits.test.x[:64], digits.test.y[:64]
    gen = torch.Generator().manual_seed(0)
    a = adv.training_adversary(digits_module, x, y, eps=0.1, steps=3, step_size=0.05, generator=gen)
    b = adv.trades_adversary(digits_module, x, eps=0.1, steps=3, step_size=0.05, generator=gen)
    for z in (a, b):
        assert (z - x).abs().max() <= 0.1 + 1e-6
        assert z.min() >= 0 and z.max() <= 1
    # the last iterate is kept for every point (training must see perturbed points)
    assert ((a - x).abs().flatten(1).max(1).values > 0).all()
    assert digits_module.training is False and all(
        p.requires_grad for p in digits_module.parameters()
    )


def test_collapse_guard_stops_and_rolls_back(digits, small_spec):
    from bastion.models.zoo import build_model

    scripted = iter([0.5, 0.7, 0.1, 0.9, 0.9, 0.9])
    guard = adv.CollapseGuard(drop=0.2)
    model = build_model(small_spec)
    result = train_model(
        model,
        digits.train.head(200),
        epochs=6,
        seed=0,
        select_fn=lambda m, xv, yv: next(scripted),
        stop_fn=guard,
    )
    assert result.stopped_early and result.epochs_run == 3
    assert result.best_epoch == 1 and guard.collapsed_at == 2


def test_cyclic_lr_rises_then_falls():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0)
    sched = adv.cyclic_lr(0.4)(opt, 10)
    lrs = []
    for _ in range(10):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(1.0) and lrs.index(max(lrs)) == 3
    assert lrs[0] < lrs[3] and lrs[-1] < 0.25


def test_bad_parameters_are_clear_errors(digits, digits_module):
    from bastion.errors import ConfigError

    with pytest.raises(ConfigError, match="TRADES beta must be >= 0"):
        adv.trades_loss(beta=-1, eps=0.1, steps=1, step_size=0.1)
    with pytest.raises(ConfigError, match="peak_at must be in"):
        adv.cyclic_lr(1.5)
    with pytest.raises(ConfigError, match="fast_at needs val_fraction > 0"):
        apply_recipe(
            parse_recipe([{"fast_at": {"val_fraction": 0}}]), digits_module, digits.train.head(100)
        )
