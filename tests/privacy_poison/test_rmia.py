"""RMIA (Zarifzadeh et al. 2024): its scores against a direct re-computation of the paper's
formula, its power on an overfit model and its chance level where nothing leaks, its errors,
and the membership probe's ``rmia`` finding."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bastion.assess.membership_probe import MembershipProbe, membership_severity
from bastion.assess.probe import Members, ProbeContext
from bastion.assess.schema import Budgets, ThreatModel
from bastion.attacks.inference import loss_threshold_scores, membership_metrics
from bastion.attacks.rmia import DEFAULT_A, RMIA, estimate_offline_a
from bastion.errors import AttackError, NotFittedError
from bastion.models.io import LoadedModel
from bastion.models.train import train_model
from bastion.models.zoo import build_model, zoo_spec

RECIPE = {"epochs": 80, "lr": 3e-3, "val_fraction": 0.0}


def _probs(model, x, y) -> np.ndarray:
    with torch.no_grad():
        return model(x).double().softmax(1).gather(1, y.view(-1, 1)).squeeze(1).numpy()


@pytest.fixture(scope="module")
def overfit(digits):
    """An MLP trained long on 150 of 300 digits (the population); the other 150 held out;
    RMIA with 2 reference models on the population."""
    g = torch.Generator().manual_seed(0)
    population = digits.train.subset(torch.randperm(len(digits.train), generator=g)[:300])
    member = torch.zeros(300, dtype=torch.bool)
    member[torch.randperm(300, generator=g)[:150]] = True
    spec = zoo_spec("mlp", digits.train.shape, 10, hidden=128, depth=1)
    torch.manual_seed(100)
    target = build_model(spec)
    train_model(target, population.subset(member.nonzero().flatten()), seed=100, **RECIPE)
    rmia = RMIA(n_reference=2, seed=0, **RECIPE).fit(population, lambda: build_model(spec))
    return population, member, target, rmia, spec


def test_rmia_separates_the_members_of_an_overfit_model(overfit):
    population, member, target, rmia, _ = overfit
    scores = rmia.score(target, population.x, population.y)
    assert scores.shape == (300,) and bool(((scores >= 0) & (scores <= 1)).all())
    m = membership_metrics(scores, member)
    base = membership_metrics(loss_threshold_scores(target, population.x, population.y), member)
    assert m.auc > 0.6, m.auc
    assert m.auc > base.auc + 0.05, (m.auc, base.auc)
    assert m.tpr_at(0.01) > 0.02, m.tpr_at(0.01)
    # membership labels that carry no information: chance, whatever the scores
    shuffled = member[torch.randperm(300, generator=torch.Generator().manual_seed(3))]
    assert abs(membership_metrics(scores, shuffled).auc - 0.5) < 0.1


def test_rmia_is_near_chance_on_a_model_trained_on_other_data(overfit, digits):
    """A target that never saw the population: its 'members' are an arbitrary half."""
    population, member, _, rmia, spec = overfit
    used = {tuple(r) for r in population.x.flatten(1).tolist()}
    others = [i for i, r in enumerate(digits.test.x.flatten(1).tolist()) if tuple(r) not in used]
    torch.manual_seed(200)
    outsider = build_model(spec)
    train_model(outsider, digits.test.subset(torch.tensor(others[:150])), seed=200, **RECIPE)
    m = membership_metrics(rmia.score(outsider, population.x, population.y), member)
    assert abs(m.auc - 0.5) < 0.1, m.auc


def test_rmia_matches_the_formula(overfit):
    """Offline score = fraction of z with LR(x)/LR(z) > γ, Pr(x) = ½((1+a) p_out + (1−a)),
    p_out from the one reference model (of two, balanced halves) that did not train on x."""
    population, _, target, rmia, _ = overfit
    inside = rmia.in_mask_.numpy()
    assert (inside.sum(0) == 1).all(), "balanced halves: every row IN exactly 1 of 2"
    assert len(rmia.z_index_) == 300
    ref = np.stack([_probs(m, population.x, population.y) for m in rmia.reference_models_])
    p_t = _probs(target, population.x, population.y)
    estimated = rmia.a_
    for a, gamma in ((rmia.a_, 1.0), (0.0, 1.0), (0.6, 2.0), (1.0, 1.0)):
        variant = rmia.variant(offline_a=a, gamma=gamma)
        assert variant.a_ == a and variant.gamma == gamma
        p_out = np.where(inside[0], ref[1], ref[0])
        marginal = 0.5 * ((1 + a) * p_out + (1 - a))
        lr = p_t / marginal
        expected = (lr[:, None] / lr[None, :] > gamma).mean(1)
        got = variant.score(target, population.x, population.y).numpy()
        # ratios within float rounding of γ may land either side
        close = np.abs(np.log(lr[:, None] / lr[None, :]) - math.log(gamma)) < 1e-9
        assert np.abs(got - expected).max() <= close.sum(1).max() / 300 + 1e-6, (a, gamma)
    assert rmia.a_ == estimated and rmia.gamma == 1.0, "variants leave the original alone"
    # online: Pr(x) is the mean over both models (one IN, one OUT)
    lr_on = p_t / ref.mean(0)
    expected = (lr_on[:, None] / lr_on[None, :] > 1.0).mean(1)
    got = rmia.variant(online=True).score(target, population.x, population.y).numpy()
    assert np.abs(got - expected).max() < 2 / 300


def test_offline_a_is_the_least_squares_slope(overfit):
    _, _, _, rmia, _ = overfit
    p = rmia.reference_logp_.exp().numpy()
    inside = rmia.in_mask_.numpy()
    u = 1 - np.where(inside[0], p[0], p[1])  # 1 − p_in
    v = 1 - np.where(inside[0], p[1], p[0])  # 1 − p_out
    assert rmia.a_ == pytest.approx(float(np.clip((u * v).sum() / (v * v).sum(), 0, 1)))
    assert 0 <= rmia.a_ < 0.5, "an overfit model fits its training rows: p_in close to 1"
    assert "least squares" in rmia.a_source_
    # a model that changes nothing by training on a row: a = 1
    logp = torch.log(torch.tensor([[0.2, 0.9, 0.5], [0.2, 0.9, 0.5]], dtype=torch.float64))
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert estimate_offline_a(logp, mask) == pytest.approx(1.0)


def test_one_reference_model_and_candidates_outside_the_population(overfit, digits):
    population, member, target, _, spec = overfit
    one = RMIA(n_reference=1, epochs=20, lr=3e-3).fit(population, lambda: build_model(spec))
    assert one.a_ == DEFAULT_A and "default" in one.a_source_
    assert int(one.in_mask_.sum()) == 150
    scores = one.score(target, population.x, population.y)
    assert torch.isfinite(scores).all()
    assert membership_metrics(scores, member).auc > 0.55
    x, y = digits.test.x[:20], digits.test.y[:20]  # OUT of every reference model
    out = one.score(target, x, y)
    assert out.shape == (20,) and torch.isfinite(out).all()
    with pytest.raises(AttackError, match="give n_reference >= 2"):
        one.variant(online=True)


def test_online_needs_candidates_in_the_population(overfit, digits):
    _, _, target, rmia, _ = overfit
    with pytest.raises(AttackError, match="not in the population given to fit"):
        rmia.variant(online=True).score(target, digits.test.x[:5], digits.test.y[:5])


def test_rmia_user_errors(digits_module, digits):
    x, y = digits.test.x[:5], digits.test.y[:5]
    with pytest.raises(NotFittedError, match=r"RMIA is not fitted yet: call RMIA\.fit"):
        RMIA().score(digits_module, x, y)
    with pytest.raises(NotFittedError, match=r"call RMIA\.fit"):
        RMIA().variant(online=True)
    for kw, match in (
        ({"n_reference": 0}, "n_reference >= 1"),
        ({"offline_a": 1.5}, r"offline_a must lie in \[0, 1\]"),
        ({"n_reference": 1, "offline_a": 0.0}, "give offline_a > 0"),
        ({"gamma": 0.0}, "gamma must be a positive number"),
        ({"n_z": 0}, "n_z must be None"),
        ({"n_reference": 1, "online": True}, "give n_reference >= 2"),
    ):
        with pytest.raises(AttackError, match=match):
            RMIA(**kw).fit(digits.train, lambda: digits_module)
    with pytest.raises(AttackError, match="needs at least 4"):
        RMIA().fit(digits.train.head(3), lambda: digits_module)


# -------------------------------------------------------------------------------- probe
def test_probe_emits_the_rmia_finding(digits, small_cnn_spec, fast_recipe, tmp_path):
    """With one shadow model LiRA is excluded, so only the loss threshold and RMIA run; the
    finding is exactly what RMIA gives on the probe's sets with the target's recipe."""
    torch.manual_seed(0)
    module = build_model(small_cnn_spec)
    train_model(module, digits.train, epochs=fast_recipe.epochs, lr=fast_recipe.lr, seed=0)
    model = LoadedModel(
        name="small",
        sha256="0" * 64,
        module=module.eval(),
        spec=small_cnn_spec,
        rebuild=lambda: build_model(small_cnn_spec),
    )
    ctx = ProbeContext(
        model=model,
        data=digits,
        threat=ThreatModel(
            probes=["membership"], budgets=Budgets(shadow_models=1, reference_models=3)
        ),
        out_dir=tmp_path,
        recipe=fast_recipe,
        members=Members.train_split(digits, "test: trained on the train split"),
    )
    probe = MembershipProbe()
    findings = list(probe.run(ctx))
    assert [f.attack for f in findings] == ["loss-threshold", "rmia"]
    assert [s.probe for s in ctx.skipped] == ["membership/lira"]
    f = findings[1]
    assert f.params == {
        "n_members": len(digits.test),
        "n_reference": 3,
        "epochs": fast_recipe.epochs,
        "online": False,
        "gamma": 1.0,
    }
    cand, is_member, population = probe.sets(ctx)
    rmia = RMIA(
        n_reference=3,
        epochs=fast_recipe.epochs,
        lr=fast_recipe.lr,
        batch_size=fast_recipe.batch_size,
        seed=ctx.seed,
    ).fit(population, model.rebuild)
    m = membership_metrics(rmia.score(model.module, cand.x, cand.y), is_member)
    assert f.metrics["auc"] == pytest.approx(m.auc)
    assert f.metrics["tpr_at_1%_fpr"] == pytest.approx(m.tpr_at(0.01))
    lo, hi = m.tpr_ci[0.01]
    assert (f.metrics["tpr_at_1%_fpr_ci_low"], f.metrics["tpr_at_1%_fpr_ci_high"]) == (
        pytest.approx(lo),
        pytest.approx(hi),
    )
    assert math.isnan(f.metrics["tpr_at_0.1%_fpr"]), "450 non-members cannot resolve 0.1 %"
    assert f.metrics["members"] == f.metrics["nonmembers"] == len(digits.test)
    assert f.metrics["offline_a"] == pytest.approx(rmia.a_)
    assert f.severity == pytest.approx(membership_severity(m))
    assert len(f.series["fpr"]) == len(f.series["tpr"]) > 50
    assert any("3 reference model(s)" in n and "the 2 that did not train" in n for n in f.notes)
    # resuming: a finding already done is not run again
    ctx.done = {g.key for g in findings}
    assert list(probe.run(ctx)) == []
