"""FAB-T (Croce & Hein 2020): the hyperplane projection is the exact minimal-norm step (a
linear/quadratic program as the oracle), the attack stays in the ε-ball and the box, lowers
accuracy below clean, works on 2-class models and never moves frozen features."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog, minimize

from bastion.attacks.evasion import ATTACKS, Box, robust_mask
from bastion.attacks.fab import fab_targeted, fab_targeted_attack, project_hyperplane
from bastion.errors import AttackError
from tests.attacks._vectors import accuracy, digits_vectors, size, trained_mlp


@pytest.fixture(scope="module")
def ten():
    x, y = digits_vectors()
    model = trained_mlp(x[:1000], y[:1000])
    return model, x[1000:1080], y[1000:1080]


@pytest.fixture(scope="module")
def two():
    x, y = digits_vectors((3, 8))
    model = trained_mlp(x[:250], y[:250])
    return model, x[250:310], y[250:310]


def _oracle(p: np.ndarray, w: np.ndarray, c: float, lo: np.ndarray, hi: np.ndarray, norm: str):
    """The minimal ‖d‖ with w·d = c and lo ≤ p + d ≤ hi, by a generic solver (None: infeasible)."""
    D = len(p)
    box = [(lo[j] - p[j], hi[j] - p[j]) for j in range(D)]
    if norm == "inf":
        a_ub = np.vstack([np.c_[np.eye(D), -np.ones(D)], np.c_[-np.eye(D), -np.ones(D)]])
        res = linprog(
            np.r_[np.zeros(D), 1.0],
            A_ub=a_ub,
            b_ub=np.zeros(2 * D),
            A_eq=np.r_[w, 0.0][None],
            b_eq=[c],
            bounds=[*box, (0, None)],
        )
        return res.fun if res.status == 0 else None
    cons = {"type": "eq", "fun": lambda d: w @ d - c}
    res = minimize(lambda d: d @ d, np.zeros(D), constraints=[cons], bounds=box, method="SLSQP")
    return float(np.sqrt(res.fun)) if res.success else None


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_projection_is_the_minimal_norm_step_onto_the_hyperplane(norm):
    g = torch.Generator().manual_seed(1)
    m, d = 25, 7
    p = torch.rand(m, d, generator=g, dtype=torch.float64)
    w = torch.randn(m, d, generator=g, dtype=torch.float64)
    w[0, :3] = 0  # features the hyperplane ignores
    b = (w * p).sum(1) + 0.6 * torch.randn(m, generator=g, dtype=torch.float64)
    lo, hi = (
        torch.full((1, d), 0.0, dtype=torch.float64),
        torch.full((1, d), 1.0, dtype=torch.float64),
    )
    step = project_hyperplane(p, w, b, lo, hi, norm)
    assert ((p + step) >= lo - 1e-12).all() and ((p + step) <= hi + 1e-12).all()
    assert (step[0, :3] == 0).all()
    solved = 0
    for i in range(m):
        c = float(b[i] - w[i] @ p[i])
        best = _oracle(p[i].numpy(), w[i].numpy(), c, lo[0].numpy(), hi[0].numpy(), norm)
        if best is None:
            continue
        solved += 1
        assert float(w[i] @ (p[i] + step[i])) == pytest.approx(float(b[i]), abs=1e-9)
        got = float(step[i].abs().max() if norm == "inf" else step[i].norm())
        assert got == pytest.approx(best, abs=1e-4)
    assert solved > m // 2


def test_projection_keeps_frozen_features_and_goes_as_far_as_the_box_allows():
    p = torch.tensor([[0.5, 0.5, 0.5]], dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0, 1.0]], dtype=torch.float64)
    frozen = torch.tensor([False, True, False])
    lo, hi = torch.zeros(1, 3, dtype=torch.float64), torch.ones(1, 3, dtype=torch.float64)
    step = project_hyperplane(p, w, torch.tensor([2.0], dtype=torch.float64), lo, hi, "inf", frozen)
    assert step[0, 1] == 0 and torch.allclose(step[0, [0, 2]], torch.tensor([0.25, 0.25]).double())
    far = project_hyperplane(p, w, torch.tensor([9.0], dtype=torch.float64), lo, hi, "2", frozen)
    assert torch.allclose(p + far, torch.tensor([[1.0, 0.5, 1.0]]).double())


@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.15), ("2", 1.0)])
def test_fab_t_stays_in_the_ball_and_box_and_lowers_accuracy(ten, norm, eps):
    model, x, y = ten
    adv = fab_targeted(model, x, y, eps=eps, norm=norm, steps=20, n_target_classes=3)
    assert adv.min() >= 0 and adv.max() <= 1
    assert float(size(adv, x, norm).max()) <= eps + 1e-6
    clean = accuracy(model, x, y)
    assert clean > 0.85
    assert accuracy(model, adv, y) < clean - 0.3


def test_fab_t_finds_smaller_distances_than_the_budget_allows(ten):
    """A minimal-norm attack: the adversarials it accepts under a large ε are mostly much
    closer than ε (a fixed-step attack would sit on the sphere)."""
    model, x, y = ten
    adv = fab_targeted(model, x, y, eps=0.5, steps=20, n_target_classes=3)
    fooled = (model(adv).argmax(1) != y) & (model(x).argmax(1) == y)
    assert int(fooled.sum()) > 40
    assert float(size(adv[fooled], x[fooled], "inf").median()) < 0.25


def test_fab_t_robust_mask_matches_the_full_loop_and_needs_no_more_than_clean(ten):
    model, x, y = ten
    kw = {"eps": 0.1, "steps": 15, "n_target_classes": 2}
    fast = robust_mask(model, x, y, attack="fab-t", **kw)
    full = robust_mask(model, x, y, attack="fab-t", early_stop=False, **kw)
    clean = model(x).argmax(1) == y
    assert torch.equal(fast, full)
    assert not (fast & ~clean).any() and int(fast.sum()) < int(clean.sum())


def test_fab_t_on_a_two_class_model(two):
    model, x, y = two
    out, fooled = fab_targeted_attack(
        model,
        x,
        y,
        eps=0.3,
        norm="inf",
        steps=20,
        n_target_classes=9,
        restarts=1,
        bounds=(0.0, 1.0),
        early_stop=True,
        generator=None,
    )
    assert accuracy(model, x, y) > 0.85
    assert float(size(out, x, "inf").max()) <= 0.3 + 1e-6
    assert int(fooled.sum()) > 0
    assert torch.equal(fooled, model(out).argmax(1) != y)


@pytest.mark.parametrize("norm", ["inf", "2"])
def test_fab_t_never_moves_frozen_features(ten, norm):
    model, x, y = ten
    frozen = torch.zeros(64, dtype=torch.bool)
    frozen[[18, 19, 26, 27, 36, 44]] = True  # centre pixels, where digits differ most
    box = Box(torch.zeros(64), torch.full((64,), 0.9).maximum(x.amax(0)), frozen)
    eps = 0.2 if norm == "inf" else 1.0
    adv = fab_targeted(
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        bounds=box,
        steps=15,
        n_target_classes=2,
        restarts=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(adv[:, frozen], x[:, frozen])
    assert (adv <= box.hi).all() and (adv >= 0).all()
    assert float(size(adv, x, norm).max()) <= eps + 1e-6
    assert accuracy(model, adv, y) < accuracy(model, x, y) - 0.2


def test_fab_t_is_registered_and_checks_its_budget(ten):
    model, x, y = ten
    assert "fab-t" in ATTACKS
    with pytest.raises(AttackError, match="n_target_classes must be an integer >= 1"):
        fab_targeted(model, x, y, eps=0.1, n_target_classes=0)
    with pytest.raises(AttackError, match="steps must be an integer >= 1"):
        fab_targeted(model, x, y, eps=0.1, steps=0)
