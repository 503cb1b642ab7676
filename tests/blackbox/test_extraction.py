"""Model extraction: query sources, the surrogate estimator, the curve, transfer attacks."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.extraction import (
    ModelExtraction,
    draw_queries,
    extraction_curve,
    predict_labels,
    transfer_attack,
)
from bastion.attacks.targets import ModuleTarget
from bastion.errors import AttackError, NotFittedError
from bastion.models.zoo import build_model, zoo_spec


@pytest.fixture()
def split(digits, digits_module):
    perm = torch.randperm(len(digits.test), generator=torch.Generator().manual_seed(0))
    pool = digits.test.x[perm[:200]]
    x_eval, y_eval = digits.test.x[perm[200:]], digits.test.y[perm[200:]]
    return pool, x_eval, y_eval, predict_labels(digits_module, x_eval)


def builder(digits):
    spec = zoo_spec("cnn", digits.test.shape, 10, width=8, hidden=32)
    return lambda: build_model(spec)


FAST = {"min_steps": 100, "max_steps": 400, "epochs": 10}


@pytest.mark.parametrize("source", ["pool", "transformed", "noise"])
def test_query_sources_stay_in_bounds(split, source):
    pool = split[0]
    x = draw_queries(
        source, pool, 500, bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(1)
    )
    assert x.shape == (500, *pool.shape[1:])
    assert x.min() >= 0 and x.max() <= 1
    if source == "pool":
        # the first len(pool) queries are the pool itself, the rest augmented copies
        assert torch.equal(x[:200].sort(0).values, pool.sort(0).values)
        assert not any(torch.equal(x[300], p) for p in pool)
    if source == "transformed":
        assert not torch.allclose(x.mean(0), pool.mean(0), atol=0.05)  # another distribution


@pytest.mark.parametrize("kind", ["scores", "labels"])
def test_fidelity_grows_with_the_budget(digits, digits_module, split, kind):
    pool, x_eval, y_eval, victim = split
    target = ModuleTarget(digits_module, kind=kind)
    curve = extraction_curve(
        target,
        builder(digits),
        pool,
        x_eval,
        y_eval,
        victim,
        source="pool",
        budgets=[20, 1000],
        **FAST,
    )
    assert curve.answers == kind and curve.budgets == [20, 1000]
    assert curve.queries == 1000 == target.queries  # nested: the large budget includes the small
    assert curve.fidelity[1] > curve.fidelity[0] + 0.1
    assert curve.fidelity[1] > 0.8


def test_jacobian_augmentation_spends_exactly_the_budget(digits, digits_module, split):
    pool, x_eval, _, victim = split
    target = ModuleTarget(digits_module)
    est = ModelExtraction(builder(digits), source="jacobian", budget=300, seed_size=40, **FAST)
    est.fit(target, pool)
    assert target.queries == est.queries_ == 300 == est.x_queried_.shape[0]
    # the synthetic points leave the pool: λ-steps along the surrogate's Jacobian sign
    seeds, first_round = est.x_queried_[:40], est.x_queried_[40:80]
    gap = (first_round[:, None] - seeds[None]).abs().flatten(2).amax(2).min(1).values
    assert (gap <= 0.1 + 1e-6).all() and (gap > 0.05).all()
    assert est.fidelity(x_eval, victim) > 0.5


def test_estimator_contract_and_errors(digits, digits_module, split):
    pool = split[0]
    est = ModelExtraction(builder(digits), source="pool", budget=50)
    with pytest.raises(NotFittedError, match=r"call ModelExtraction.fit"):
        est.predict(pool)
    with pytest.raises(AttackError, match="unknown query source 'web'"):
        ModelExtraction(builder(digits), source="web").fit(digits_module, pool)
    with pytest.raises(AttackError, match="query budgets must be >= 1"):
        ModelExtraction(builder(digits), budget=0).fit(digits_module, pool)
    with pytest.raises(AttackError, match="pool must be a non-empty image batch"):
        ModelExtraction(builder(digits)).fit(digits_module, pool[:0])
    assert (
        est.fit(
            digits_module,
            pool,
        )
        is est
        and est.surrogate_ is not None
    )


def test_refused_answers_are_left_out_of_training(digits, split):
    pool = split[0]
    refuse_all = ModuleTarget(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)))
    refuse_all._answer = lambda x: torch.full((x.shape[0], 10), float("nan"))  # type: ignore[method-assign]
    with pytest.raises(AttackError, match="every query was refused"):
        ModelExtraction(builder(digits), budget=20).fit(refuse_all, pool)


def test_transfer_attack_from_a_good_surrogate_fools_the_victim(digits, digits_module, split):
    pool, x_eval, y_eval, victim = split
    est = ModelExtraction(builder(digits), source="pool", budget=1000, **FAST).fit(
        ModuleTarget(digits_module), pool
    )
    ok = (victim == y_eval).nonzero().squeeze(1)[:60]
    labels = ModuleTarget(digits_module, kind="labels")
    weak = transfer_attack(est.surrogate_, labels, x_eval[ok], y_eval[ok], eps=0.02)
    strong = transfer_attack(est.surrogate_, labels, x_eval[ok], y_eval[ok], eps=0.3)
    assert labels.queries == 2 * len(ok)
    assert strong.float().mean() > 0.5 > weak.float().mean()
