"""AutoAttack's standard version (APGD-CE → APGD-T → FAB-T → Square): the per-sample worst
case can only lower the two-attack ensemble's robust accuracy on the same points and seed,
every member runs on the survivors only with its budget recorded, the result stays in the
ε-ball and the box, and 2-class models and frozen features are handled."""

from __future__ import annotations

import pytest
import torch

from bastion.assess.schema import ThreatModel
from bastion.attacks.autoattack import MEMBERS, autoattack, autoattack_run
from bastion.attacks.evasion import Box, robust_mask
from bastion.errors import AttackError
from tests.attacks._vectors import accuracy, digits_vectors, size, trained_mlp

FAST = {"steps": 10, "n_target_classes": 3, "square_queries": 100}


@pytest.fixture(scope="module")
def ten():
    x, y = digits_vectors()
    model = trained_mlp(x[:1000], y[:1000])
    return model, x[1000:1100], y[1000:1100]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.06), ("2", 0.4)])
def test_autoattack_is_no_weaker_than_the_ensemble_point_by_point(ten, norm, eps):
    model, x, y = ten
    kw = {"eps": eps, "norm": norm, "steps": 10, "n_target_classes": 3}
    ens = robust_mask(model, x, y, attack="ensemble", generator=gen(3), **kw)
    aa = robust_mask(model, x, y, attack="autoattack", generator=gen(3), square_queries=100, **kw)
    assert not (aa & ~ens).any(), "a point the ensemble fooled survived autoattack"
    assert int(aa.sum()) <= int(ens.sum())
    assert 0 < int(ens.sum()) < len(y)  # a budget where the comparison means something


def test_members_run_on_survivors_with_their_budgets(ten):
    model, x, y = ten
    res = autoattack_run(model, x, y, eps=0.06, generator=gen(1), **FAST)
    assert [m.name for m in res.members] == list(MEMBERS)
    clean = model(x).argmax(1) == y
    attacked = [m.attacked for m in res.members]
    assert attacked[0] == int(clean.sum())
    for before, after in zip(res.members, res.members[1:], strict=False):
        assert after.attacked == before.attacked - before.fooled
    assert int(res.robust.sum()) == attacked[-1] - res.members[-1].fooled
    assert int((clean & ~res.robust).sum()) == sum(m.fooled for m in res.members)
    budgets = {m.name: m.budget for m in res.members}
    assert budgets["square"] == "100 queries, p_init 0.8"
    assert budgets["fab-t"] == "10 iterations, 3 target classes"
    fooled_now = model(res.x_adv).argmax(1) != y
    assert torch.equal(~fooled_now, res.robust)
    assert float(size(res.x_adv, x, "inf").max()) <= 0.06 + 1e-6
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1


def test_default_budgets_are_autoattacks_standard(ten):
    model, x, _ = ten
    wrong = (model(x[:3]).argmax(1) + 1) % 10  # nothing to attack: only the record is checked
    res = autoattack_run(model, x[:3], wrong, eps=0.1)
    assert all(m.skipped == "no point left" for m in res.members)
    assert {m.name: m.budget for m in res.members} == {
        "apgd-ce": "100 iterations, 1 restart",
        "apgd-t": "100 iterations, 9 target classes",
        "fab-t": "100 iterations, 9 target classes",
        "square": "5000 queries, p_init 0.8",
    }


def test_two_class_model_skips_apgd_t_and_says_why():
    x, y = digits_vectors((3, 8))
    model = trained_mlp(x[:250], y[:250])
    x, y = x[250:290], y[250:290]
    res = autoattack_run(model, x, y, eps=0.15, generator=gen(), **FAST)
    skipped = {m.name: m.skipped for m in res.members}
    assert "needs >= 4 classes" in skipped["apgd-t"]
    assert float(res.robust.float().mean()) < accuracy(model, x, y)
    assert float(size(res.x_adv, x, "inf").max()) <= 0.15 + 1e-6


def test_frozen_features_untouched(ten):
    model, x, y = ten
    frozen = torch.zeros(64, dtype=torch.bool)
    frozen[[18, 19, 26, 27, 36, 44]] = True
    box = Box(torch.zeros(64), torch.ones(64), frozen)
    adv = autoattack(model, x, y, eps=0.08, bounds=box, generator=gen(), **FAST)
    assert torch.equal(adv[:, frozen], x[:, frozen])
    assert float(size(adv, x, "inf").max()) <= 0.08 + 1e-6
    assert accuracy(model, adv, y) < accuracy(model, x, y)


def test_threat_model_accepts_autoattack_and_bad_options_are_refused(ten):
    assert ThreatModel(attacks=["autoattack", "ensemble", "fab-t"]).attacks[0] == "autoattack"
    model, x, y = ten
    with pytest.raises(AttackError, match="square_queries must be an integer >= 1"):
        autoattack(model, x, y, eps=0.1, square_queries=0)
    with pytest.raises(AttackError, match="square_p_init must lie in"):
        autoattack(model, x, y, eps=0.1, square_p_init=1.5)
