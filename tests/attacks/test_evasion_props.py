"""Properties every evasion attack keeps (hypothesis on small shapes) and the errors a user
gets for bad arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from bastion.attacks.evasion import (
    ATTACKS,
    apgd,
    apgd_targeted,
    fgsm,
    pgd,
    robust_mask,
    standard_ensemble,
)
from bastion.errors import AttackError

CLASSES = 5


def tiny_model(features: int, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 12), nn.ReLU(), nn.Linear(12, CLASSES))


@st.composite
def problems(draw):
    n = draw(st.integers(1, 4))
    shape = (n, draw(st.integers(1, 2)), draw(st.integers(2, 4)), draw(st.integers(2, 4)))
    lo = draw(st.floats(-2.0, 1.0))
    hi = lo + draw(st.floats(0.25, 3.0))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    x = lo + (hi - lo) * torch.rand(shape, generator=g)
    if draw(st.booleans()):  # some pixels exactly on the bounds
        x[..., 0, 0] = lo
        x[..., -1, -1] = hi
    y = torch.randint(0, CLASSES, (n,), generator=g)
    norm = draw(st.sampled_from(["inf", "2"]))
    scale = 1.0 if norm == "inf" else float(x[0].numel()) ** 0.5
    eps = draw(st.floats(0.0, 0.6)) * (hi - lo) * scale
    return x, y, (lo, hi), norm, eps, seed


def check_ball(adv, x, eps, norm, bounds):
    lo, hi = bounds
    assert adv.shape == x.shape and torch.isfinite(adv).all()
    assert adv.min() >= lo and adv.max() <= hi
    d = (adv - x).flatten(1)
    size = d.abs().amax(1) if norm == "inf" else d.norm(dim=1)
    assert (size <= eps * (1 + 1e-5) + 1e-6).all()


@settings(max_examples=30, deadline=None)
@given(problems(), st.sampled_from(sorted(ATTACKS)), st.booleans())
def test_every_attack_stays_in_bounds_and_in_the_eps_ball(problem, attack, early_stop):
    x, y, bounds, norm, eps, seed = problem
    model = tiny_model(x[0].numel(), seed)
    extra = {"n_target_classes": 3} if attack in ("apgd-t", "ensemble") else {}
    adv = ATTACKS[attack](
        model,
        x,
        y,
        eps=eps,
        norm=norm,
        bounds=bounds,
        steps=4,
        restarts=2,
        generator=torch.Generator().manual_seed(seed),
        early_stop=early_stop,
        **extra,
    )
    check_ball(adv, x, eps, norm, bounds)


@settings(max_examples=15, deadline=None)
@given(problems())
def test_robust_mask_is_false_wherever_clean_is_wrong(problem):
    x, y, bounds, norm, eps, seed = problem
    model = tiny_model(x[0].numel(), seed)
    mask = robust_mask(
        model, x, y, attack="pgd", eps=eps, norm=norm, bounds=bounds, steps=3, batch_size=2
    )
    with torch.no_grad():
        clean = model(x).argmax(1) == y
    assert mask.dtype == torch.bool and mask.shape == y.shape
    assert not (mask & ~clean).any()


X = torch.rand(4, 1, 3, 3)
Y = torch.tensor([0, 1, 2, 3])
MODEL = tiny_model(9, 0)


@pytest.mark.parametrize("fn", [fgsm, pgd, apgd, apgd_targeted, standard_ensemble])
@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": 0.1, "norm": "l1"}, "unknown norm 'l1'"),
        ({"eps": -0.1}, "eps must be a non-negative number"),
        ({"eps": float("nan")}, "eps must be a non-negative number"),
        ({"eps": 0.1, "bounds": (1.0, 0.0)}, "bounds must be"),
    ],
)
def test_bad_arguments_raise_attack_error(fn, kwargs, match):
    with pytest.raises(AttackError, match=match):
        fn(MODEL, X, Y, **kwargs)


@pytest.mark.parametrize("fn", [fgsm, pgd, apgd, apgd_targeted, standard_ensemble])
def test_bad_inputs_raise_attack_error(fn):
    bad = X.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(AttackError, match="NaN or Inf"):
        fn(MODEL, bad, Y, eps=0.1)
    with pytest.raises(AttackError, match="x has 4 samples but y has 3"):
        fn(MODEL, X, Y[:3], eps=0.1)
    with pytest.raises(AttackError, match=r"y must hold one label per sample"):
        fn(MODEL, X, Y[:, None], eps=0.1)
    with pytest.raises(AttackError, match="outside bounds"):
        fn(MODEL, X * 3, Y, eps=0.1)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: pgd(MODEL, X, Y, eps=0.1, steps=0), "steps must be an integer >= 1"),
        (lambda: pgd(MODEL, X, Y, eps=0.1, restarts=0), "restarts must be an integer >= 1"),
        (lambda: pgd(MODEL, X, Y, eps=0.1, step_size=-1.0), "step_size must be"),
        (lambda: apgd(MODEL, X, Y, eps=0.1, loss="hinge"), "unknown APGD loss 'hinge'"),
        (lambda: apgd(MODEL, X, Y, eps=0.1, rho=1.5), r"rho must be in \(0, 1\]"),
        (
            lambda: apgd_targeted(MODEL, X, Y, eps=0.1, n_target_classes=0),
            "n_target_classes must be",
        ),
        (
            lambda: apgd(MODEL, X, torch.tensor([0, 1, 2, 7]), eps=0.1),
            r"labels must be in \[0, 4\]",
        ),
        (
            lambda: robust_mask(MODEL, X, Y, attack="cw", eps=0.1),
            "unknown attack 'cw': choose one of",
        ),
        (
            lambda: robust_mask(MODEL, X, Y, attack="pgd", eps=0.1, batch_size=0),
            "batch_size must be",
        ),
        (
            lambda: robust_mask(MODEL, X, Y, attack="pgd", eps=0.1, rho=0.5),
            "bad option for attack 'pgd'",
        ),
        (lambda: robust_mask(MODEL, X, Y, attack="apgd-ce", eps=0.1, steps=0), "steps must be"),
        (
            lambda: robust_mask(MODEL, X, torch.tensor([0, 1, 2, 9]), attack="pgd", eps=0.1),
            "labels must be in",
        ),
    ],
)
def test_bad_options_raise_attack_error(call, match):
    with pytest.raises(AttackError, match=match):
        call()


def test_targeted_dlr_needs_four_classes():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(9, 3))
    with pytest.raises(AttackError, match="at least 4 classes"):
        apgd_targeted(model, X, torch.tensor([0, 1, 2, 0]), eps=0.1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attacks_run_on_cuda(attack):
    model = tiny_model(9, 0).cuda()
    x, y = X.cuda(), Y.cuda()
    extra = {"n_target_classes": 3} if attack in ("apgd-t", "ensemble") else {}
    gen = torch.Generator(device="cuda").manual_seed(0)
    mask = robust_mask(model, x, y, attack=attack, eps=0.3, steps=5, generator=gen, **extra)
    adv = ATTACKS[attack](
        model, x, y, eps=0.3, steps=5, generator=torch.Generator().manual_seed(0), **extra
    )
    assert mask.device.type == "cuda" and adv.device.type == "cuda"
    check_ball(adv, x, 0.3, "inf", (0.0, 1.0))


@pytest.mark.parametrize("attack", sorted(ATTACKS))
@pytest.mark.parametrize("norm", ["inf", "2"])
def test_double_precision_in_double_out(attack, norm):
    model = tiny_model(9, 1).double()
    x = X.double()
    extra = {"n_target_classes": 3} if attack in ("apgd-t", "ensemble") else {}
    adv = ATTACKS[attack](model, x, Y, eps=0.3, norm=norm, steps=3, **extra)
    assert adv.dtype == torch.float64
    check_ball(adv, x, 0.3, norm, (0.0, 1.0))
