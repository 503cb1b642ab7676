"""The ε-continuation robustness curve and PGD's warm start, on the small digits CNN."""

from __future__ import annotations

import itertools

import pytest
import torch

from bastion.attacks.curve import pgd_curve
from bastion.attacks.evasion import pgd, robust_mask
from bastion.errors import AttackError

GRID = [0.02, 0.05, 0.1, 0.2]


@pytest.fixture(scope="module")
def batch(digits):
    return digits.test.x[:150], digits.test.y[:150]


def test_curve_rows_are_monotone_and_start_below_clean(digits_module, batch):
    x, y = batch
    robust = pgd_curve(digits_module, x, y, GRID, batch_size=64)
    with torch.no_grad():
        clean = digits_module(x).argmax(1) == y
    assert robust.shape == (len(GRID), len(x))
    assert not (robust[0] & ~clean).any()  # a misclassified point is never robust
    for a, b in itertools.pairwise(robust):
        assert not (b & ~a).any()  # robust at a larger ε implies robust at the smaller one
    curve = robust.float().mean(1)
    assert curve[-1] < curve[0] < clean.float().mean() + 1e-9
    assert float(curve[-1]) < 0.5  # ε=0.2 breaks most of an undefended digits model


def test_curve_is_as_strong_as_independent_pgd_within_a_few_points(digits_module, batch):
    x, y = batch
    curve = pgd_curve(digits_module, x, y, GRID).float().mean(1)
    for k, eps in enumerate(GRID):
        one = (
            robust_mask(
                digits_module,
                x,
                y,
                attack="pgd",
                eps=eps,
                steps=20,
                step_size=eps / 10,
                random_init=False,
            )
            .float()
            .mean()
        )
        assert float(curve[k]) <= float(one) + 0.03, (eps, float(curve[k]), float(one))


def test_warm_start_from_an_adversarial_point_stays_fooled(digits_module, batch):
    x, y = batch
    adv = pgd(digits_module, x, y, eps=0.1, steps=20, random_init=False)
    with torch.no_grad():
        fooled = digits_module(adv).argmax(1) != y
    assert fooled.sum() > 10
    again = pgd(
        digits_module,
        x[fooled],
        y[fooled],
        eps=0.1,
        steps=1,
        step_size=0.0,
        x_init=adv[fooled],
        early_stop=True,
    )
    assert (again - x[fooled]).abs().max() <= 0.1 + 1e-6
    with torch.no_grad():
        assert (digits_module(again).argmax(1) != y[fooled]).all()


def test_warm_start_is_projected_into_the_ball(digits_module, batch):
    x, y = batch
    far = (x + 0.5).clamp(0, 1)
    out = pgd(digits_module, x, y, eps=0.05, steps=1, step_size=0.0, x_init=far)
    assert (out - x).abs().max() <= 0.05 + 1e-6


@pytest.mark.parametrize(
    "grid,kw,match",
    [
        ([], {}, "empty"),
        ([0.1, 0.05], {}, "strictly increasing"),
        ([0.1], {"steps": 0}, ">= 1"),
        ([0.1], {"step_fraction": 0.0}, r"step_fraction must be in \(0, 1\]"),
        ([0.1], {"batch_size": 0}, "batch_size"),
        ([-0.1, 0.1], {}, "every eps must be a non-negative number"),
        ([0.1, float("nan")], {}, "every eps must be a non-negative number"),
        (["a lot"], {}, "eps_grid must hold numbers"),
    ],
)
def test_curve_bad_arguments(digits_module, batch, grid, kw, match):
    x, y = batch
    with pytest.raises(AttackError, match=match):
        pgd_curve(digits_module, x, y, grid, **kw)


def test_warm_start_shape_mismatch(digits_module, batch):
    x, y = batch
    with pytest.raises(AttackError, match="x_init has shape"):
        pgd(digits_module, x, y, eps=0.1, x_init=x[:3])
