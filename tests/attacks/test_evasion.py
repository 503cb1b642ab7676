"""Behaviour of the white-box evasion attacks on a small digits CNN: they lower accuracy,
APGD is at least as strong as PGD, the active set changes nothing but the cost, the
ensemble is the per-sample worst case, and the model's mode is restored."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bastion.attacks.evasion import (
    ATTACKS,
    apgd,
    apgd_targeted,
    fgsm,
    pgd,
    robust_mask,
    standard_ensemble,
)

EPS = 0.1
FAST = {  # small budgets so the whole file stays quick on 2 cores
    "fgsm": {},
    "pgd": {"steps": 10},
    "apgd-ce": {"steps": 10},
    "apgd-t": {"steps": 10, "n_target_classes": 2},
    "ensemble": {"steps": 10, "n_target_classes": 2},
    "fab-t": {"steps": 10, "n_target_classes": 2},
    "autoattack": {"steps": 10, "n_target_classes": 2, "square_queries": 50},
}


@pytest.fixture(scope="module")
def batch(digits):
    return digits.test.x[:120], digits.test.y[:120]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_attack_lowers_accuracy_below_clean(digits_module, batch, attack):
    x, y = batch
    clean = accuracy(digits_module, x, y)
    mask = robust_mask(digits_module, x, y, attack=attack, eps=EPS, generator=gen(), **FAST[attack])
    assert clean > 0.8
    assert float(mask.float().mean()) < clean - 0.1


@pytest.mark.parametrize("norm,eps", [("inf", 0.05), ("2", 0.5)])
def test_apgd_at_least_as_strong_as_pgd_on_same_budget(digits_module, batch, norm, eps):
    x, y = batch
    kw = {"eps": eps, "norm": norm, "steps": 20, "early_stop": False}
    pgd_acc = robust_mask(digits_module, x, y, attack="pgd", generator=gen(1), **kw).float().mean()
    apgd_acc = robust_mask(digits_module, x, y, attack="apgd-ce", generator=gen(1), **kw)
    assert float(apgd_acc.float().mean()) <= float(pgd_acc)


def reference_pgd_fooled(model, x, y, *, eps, steps, alpha, norm, start):
    """Slow oracle: every point runs every step; fooled if any iterate is misclassified."""
    adv, fooled = (x + start).clamp(0, 1), torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        adv.requires_grad_(True)
        logits = model(adv)
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), adv)
        fooled |= logits.argmax(1) != y
        with torch.no_grad():
            d = (
                g.sign()
                if norm == "inf"
                else g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            )
            delta = adv + alpha * d - x
            if norm == "inf":
                delta = delta.clamp(-eps, eps)
            else:
                delta = delta * (eps / delta.flatten(1).norm(dim=1).clamp_min(1e-12)).clamp(
                    max=1
                ).view(-1, 1, 1, 1)
            adv = (x + delta).clamp(0, 1)
    with torch.no_grad():
        fooled |= model(adv).argmax(1) != y
    return fooled


@pytest.mark.parametrize("norm,eps", [("inf", 0.06), ("2", 0.6)])
def test_pgd_active_set_matches_full_loop_oracle(digits_module, batch, norm, eps):
    x, y = batch
    digits_module.eval()
    steps, alpha = 10, 2.5 * eps / 10
    from bastion.attacks.evasion import random_start

    start = random_start(x, eps, norm, gen(3))
    oracle = reference_pgd_fooled(
        digits_module, x, y, eps=eps, steps=steps, alpha=alpha, norm=norm, start=start
    )
    adv = pgd(
        digits_module, x, y, eps=eps, norm=norm, steps=steps, early_stop=True, generator=gen(3)
    )
    fooled = accuracy_mask(digits_module, adv, y)
    assert torch.equal(fooled, oracle)
    assert 0 < int(fooled.sum()) < len(y)  # a non-trivial comparison


def accuracy_mask(model, x, y):
    with torch.no_grad():
        return model(x).argmax(1) != y


@pytest.mark.parametrize("attack", ["apgd-ce", "apgd-t", "ensemble"])
@pytest.mark.parametrize("norm,eps", [("inf", 0.05), ("2", 0.5)])
def test_active_set_gives_the_full_loop_robust_accuracy(digits_module, batch, attack, norm, eps):
    x, y = batch
    kw = {"attack": attack, "eps": eps, "norm": norm, **FAST[attack]}
    fast = robust_mask(digits_module, x, y, early_stop=True, generator=gen(5), **kw)
    full = robust_mask(digits_module, x, y, early_stop=False, generator=gen(5), **kw)
    assert torch.equal(fast, full)
    clean = ~accuracy_mask(digits_module, x, y)
    assert 0 < int(fast.sum()) < int(clean.sum())  # some fooled, some robust


def test_active_set_spends_fewer_passes(digits_module, batch):
    x, y = batch
    seen = []

    class Counting(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, z):
            seen.append(len(z))
            return self.inner(z)

    model = Counting(digits_module)
    robust_mask(model, x, y, attack="pgd", eps=0.2, steps=20, early_stop=False, generator=gen())
    full = sum(seen)
    seen.clear()
    robust_mask(model, x, y, attack="pgd", eps=0.2, steps=20, early_stop=True, generator=gen())
    assert sum(seen) < 0.5 * full


def test_ensemble_is_no_weaker_than_each_member(digits_module, batch):
    x, y = batch
    kw = {"eps": 0.05, "steps": 10}
    ce = robust_mask(digits_module, x, y, attack="apgd-ce", generator=gen(7), **kw)
    t = robust_mask(
        digits_module, x, y, attack="apgd-t", n_target_classes=3, generator=gen(8), **kw
    )
    ens = robust_mask(
        digits_module, x, y, attack="ensemble", n_target_classes=3, generator=gen(7), **kw
    )
    assert not (ens & ~ce).any()  # same seed: the ensemble's APGD-CE is this APGD-CE
    assert ens.sum() <= min(ce.sum(), t.sum())


def test_functions_return_adversarials_for_fooled_points(digits_module, batch):
    x, y = batch
    for fn, kw in [
        (apgd, {"steps": 10, "loss": "dlr"}),
        (apgd_targeted, {"steps": 10, "n_target_classes": 2}),
        (standard_ensemble, {"steps": 10, "n_target_classes": 2}),
    ]:
        adv = fn(digits_module, x, y, eps=0.05, generator=gen(), **kw)
        assert accuracy(digits_module, adv, y) < accuracy(digits_module, x, y) - 0.05


def test_targeted_pgd_reaches_the_target(digits_module, batch):
    x, y = batch
    target = (y + 1) % 10
    adv = pgd(digits_module, x, target, eps=0.3, steps=20, targeted=True, generator=gen())
    with torch.no_grad():
        hit = (digits_module(adv).argmax(1) == target).float().mean()
    assert hit > 0.5


def test_fgsm_l2_is_a_normalised_step(digits_module, batch):
    x, y = batch
    adv = fgsm(digits_module, x, y, eps=0.5, norm="2")
    norms = (adv - x).flatten(1).norm(dim=1)
    assert norms.max() <= 0.5 + 1e-5 and norms.mean() > 0.3


@pytest.mark.parametrize("attack", sorted(ATTACKS))
def test_eval_mode_during_attack_and_mode_restored(batch, attack):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 32), nn.Dropout(0.5), nn.BatchNorm1d(32), nn.Linear(32, 10)
    )
    modes = []
    model.register_forward_hook(lambda m, i, o: modes.append(m.training))
    model.train()
    model[1].weight.requires_grad_(False)
    x, y = batch
    robust_mask(model, x[:20], y[:20], attack=attack, eps=0.1, **FAST[attack])
    assert modes and not any(modes)
    assert model.training and model[2].training
    assert not model[1].weight.requires_grad and model[1].bias.requires_grad
    assert model[1].weight.grad is None and model[4].weight.grad is None


def test_same_generator_seed_same_result(digits_module, batch):
    x, y = batch
    a = apgd(digits_module, x, y, eps=0.05, steps=10, generator=gen(9))
    b = apgd(digits_module, x, y, eps=0.05, steps=10, generator=gen(9))
    assert torch.equal(a, b)


def test_misclassified_points_are_never_attacked(batch):
    x, y = batch
    calls = []

    class Wrong(nn.Module):
        def forward(self, z):
            calls.append(len(z))
            out = torch.zeros(len(z), 10)
            out[torch.arange(len(z)), (y[: len(z)] + 1) % 10] = 1.0
            return out + 0 * z.flatten(1)[:, :1]

    mask = robust_mask(Wrong(), x[:50], y[:50], attack="ensemble", eps=0.1)
    assert not mask.any() and calls == [50]


def test_eps_zero_keeps_clean_accuracy(digits_module, batch):
    x, y = batch
    mask = robust_mask(digits_module, x, y, attack="ensemble", eps=0.0)
    assert torch.equal(mask, ~accuracy_mask(digits_module, x, y))


def test_survivor_curve_is_monotone(digits_module, batch):
    x, y = batch
    with torch.no_grad():
        alive = digits_module(x).argmax(1) == y
    accs = []
    for eps in (0.02, 0.05, 0.1):
        idx = alive.nonzero().flatten()
        alive[idx] = robust_mask(
            digits_module, x[idx], y[idx], attack="pgd", eps=eps, steps=10, generator=gen()
        )
        accs.append(float(alive.float().mean()))
    assert accs == sorted(accs, reverse=True) and accs[-1] < accs[0]


def test_fast_layout_restores_the_weights_even_on_error(digits_module, batch):
    from bastion.attacks._ball import fast_layout

    x, y = batch
    before = {
        k: (v.data_ptr(), v.stride(), v.clone()) for k, v in digits_module.state_dict().items()
    }
    with pytest.raises(RuntimeError, match="boom"), fast_layout(digits_module):
        conv = digits_module[2].weight  # 16 input channels: the layouts differ
        assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
        raise RuntimeError("boom")
    robust_mask(digits_module, x, y, attack="pgd", eps=0.1, steps=3)
    for k, v in digits_module.state_dict().items():
        ptr, stride, value = before[k]
        assert v.data_ptr() == ptr and v.stride() == stride and torch.equal(v, value)
