"""Square attack and HopSkipJump: behaviour on the digits model, query discipline."""

from __future__ import annotations

import pytest
import torch

from bastion.attacks.blackbox import CallableTarget, ModuleTarget, hopskipjump, square_attack
from bastion.attacks.square import margin_loss, p_selection
from bastion.errors import AttackError


@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.2), ("2", 1.5)])
def test_square_lowers_accuracy_within_the_ball(correct_batch, digits_module, norm, eps):
    x, y = correct_batch
    res = square_attack(ModuleTarget(digits_module), x, y, eps=eps, norm=norm, max_queries=300)
    dist = res.distance(x, norm)
    assert (dist <= eps + 1e-5).all()
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    with torch.no_grad():
        fooled = digits_module(res.x_adv).argmax(1) != y
    assert torch.equal(fooled, res.success)  # success is the target's own verdict
    assert fooled.float().mean() >= 0.5  # all points start correct: accuracy drops by half
    assert (res.queries <= 300).all()
    # per-point stop: a point that succeeded spends no query afterwards
    assert res.queries[res.success].float().mean() < 300


def test_square_is_seeded_and_finer_eps_is_weaker(correct_batch, digits_module):
    x, y = correct_batch
    runs = [
        square_attack(
            ModuleTarget(digits_module),
            x,
            y,
            eps=e,
            max_queries=100,
            generator=torch.Generator().manual_seed(3),
        )
        for e in (0.05, 0.05, 0.3)
    ]
    assert torch.equal(runs[0].x_adv, runs[1].x_adv)
    assert runs[2].success.sum() > runs[0].success.sum()


def test_black_box_attacks_only_call_the_query_target(correct_batch, trap, recording):
    x, y = correct_batch[0][:10], correct_batch[1][:10]
    target = recording("scores")
    square_attack(target, x, y, eps=0.2, max_queries=50)
    assert target.calls and sum(target.calls) == target.queries
    assert trap.forwards == len(target.calls)  # the model ran only to answer queries
    labels = recording("labels")
    before = trap.forwards
    res = hopskipjump(labels, x, y, max_queries=150)
    assert res.success.all()
    assert sum(labels.calls) == labels.queries == int(res.queries.sum())
    assert trap.forwards - before == len(labels.calls)


def test_square_needs_scores_and_valid_arguments(correct_batch, digits_module):
    x, y = correct_batch
    labels_only = ModuleTarget(digits_module, kind="labels")
    with pytest.raises(AttackError, match="needs scores"):
        square_attack(labels_only, x, y, eps=0.1)
    with pytest.raises(AttackError, match="max_queries must be >= 1"):
        square_attack(digits_module, x, y, eps=0.1, max_queries=0)
    with pytest.raises(AttackError, match="p_init must lie in"):
        square_attack(digits_module, x, y, eps=0.1, p_init=2.0)
    with pytest.raises(AttackError, match="unknown norm"):
        square_attack(digits_module, x, y, eps=0.1, norm="1")


def test_margin_loss_and_schedule():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [float("nan")] * 3])
    y = torch.tensor([0, 0, 0])
    m = margin_loss(probs, y)
    assert m[0] > 0 and m[1] < 0 and m[2] == float("inf")
    assert torch.allclose(m[0], torch.log(torch.tensor(0.7 / 0.2)))
    assert p_selection(0.4, 0, 1000) == 0.4 and p_selection(0.4, 999, 1000) == 0.4 / 512


def test_square_ignores_refused_answers(correct_batch, digits_module):
    """A target that refuses every answer after the first: nothing improves, nothing breaks."""
    x, y = correct_batch[0][:5], correct_batch[1][:5]
    calls = []

    def answer(batch):
        calls.append(1)
        probs = torch.softmax(digits_module(batch), 1)
        return probs if len(calls) == 1 else torch.full_like(probs, float("nan"))

    res = square_attack(CallableTarget(answer), x, y, eps=0.01, max_queries=20)
    assert not res.success.any() and len(calls) == 20


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_hopskipjump_distance_shrinks_with_the_budget(correct_batch, digits_module, norm):
    x, y = correct_batch[0][:20], correct_batch[1][:20]
    medians = []
    for budget in (60, 600):
        target = ModuleTarget(digits_module, kind="labels")
        res = hopskipjump(target, x, y, norm=norm, max_queries=budget)
        assert res.success.all()
        assert (res.queries <= budget).all() and target.queries == int(res.queries.sum())
        with torch.no_grad():
            assert (digits_module(res.x_adv).argmax(1) != y).all()
        assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
        medians.append(float(res.distance(x, norm).median()))
    assert medians[1] < 0.8 * medians[0]


def test_hopskipjump_targeted_and_errors(correct_batch, digits_module):
    x, y = correct_batch
    target = ModuleTarget(digits_module, kind="labels")
    with pytest.raises(AttackError, match="needs x_init"):
        hopskipjump(target, x, y, targeted=True)
    with pytest.raises(AttackError, match="x_init has shape"):
        hopskipjump(target, x, y, x_init=x[:2])
    # targeted: start from images of another class, end classified as that class
    goal = y.roll(1)
    res = hopskipjump(
        target, x[:8], goal[:8], targeted=True, x_init=x.roll(1, 0)[:8], max_queries=300
    )
    with torch.no_grad():
        assert (digits_module(res.x_adv[res.success]).argmax(1) == goal[:8][res.success]).all()
    assert res.success.any()
