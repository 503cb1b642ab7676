"""Membership inference: metrics on synthetic scores, LiRA against a reference and against the
loss threshold on an overfit model, the probe end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch.nn import functional as F

from bastion.assess.membership_probe import MembershipProbe, membership_severity
from bastion.assess.probe import Members, ProbeContext
from bastion.assess.runner import run_assessment
from bastion.assess.schema import Budgets, Report, ThreatModel
from bastion.attacks.inference import (
    LiRA,
    correctness_scores,
    logit_confidence,
    loss_threshold_scores,
    membership_metrics,
)
from bastion.errors import AttackError, NotFittedError
from bastion.models.io import LoadedModel
from bastion.models.train import train_model
from bastion.models.zoo import build_model, zoo_spec


# ------------------------------------------------------------------------------ metrics
def test_perfect_separation():
    scores = torch.cat([torch.linspace(1, 2, 500), torch.linspace(-2, -1, 500)])
    member = torch.arange(1000) < 500
    m = membership_metrics(scores, member)
    assert m.auc == 1.0
    # 500 non-members cannot resolve an FPR of 0.1 %: reported as NaN, never interpolated
    assert math.isnan(m.tpr_at(0.001)) and m.tpr_at(0.01) == 1.0
    lo, hi = m.tpr_ci[0.01]
    assert 0.99 < lo < 1.0 and hi == 1.0
    assert m.balanced_accuracy == 1.0
    assert membership_severity(m) == 10.0
    inverted = membership_metrics(-scores, member)
    assert inverted.auc == 0.0 and inverted.tpr_at(0.01) == 0.0


def test_random_scores_are_chance():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=40_000)
    member = rng.random(40_000) < 0.5
    m = membership_metrics(scores, member)
    assert abs(m.auc - 0.5) < 0.01
    assert abs(m.tpr_at(0.01) - 0.01) < 0.004
    assert m.tpr_at(0.001) < 0.003
    assert membership_severity(m) < 1.0


def test_gaussian_scores_match_the_analytic_roc():
    """Members ~ N(d, 1), non-members ~ N(0, 1): TPR(f) = 1 − Φ(Φ⁻¹(1 − f) − d), AUC = Φ(d/√2)."""
    rng = np.random.default_rng(1)
    d, n = 2.0, 100_000
    scores = np.concatenate([rng.normal(d, 1, n), rng.normal(0, 1, n)])
    member = np.arange(2 * n) < n
    m = membership_metrics(scores, member)
    assert m.auc == pytest.approx(stats.norm.cdf(d / math.sqrt(2)), abs=0.003)
    for f in (0.001, 0.01):
        assert m.tpr_at(f) == pytest.approx(stats.norm.sf(stats.norm.isf(f) - d), rel=0.06)
    # the curve is on a log grid from 1/n to 1 and monotone
    assert m.fpr[0] <= 1e-5 and m.fpr[-1] == 1.0
    assert all(a <= b for a, b in zip(m.tpr, m.tpr[1:], strict=False))
    assert m.n_members == m.n_nonmembers == n


@pytest.mark.parametrize(
    ("scores", "member", "kw", "match"),
    [
        ([0.1, 0.2], [True], {}, "2 scores but 1 membership labels"),
        ([0.1, 0.2], [True, True], {}, "need both members and non-members"),
        ([0.1, float("nan")], [True, False], {}, "NaN or Inf"),
        ([0.1, 0.2], [True, False], {"fprs": [0.0]}, r"FPR levels must lie in \(0, 1\)"),
    ],
)
def test_metric_errors(scores, member, kw, match):
    with pytest.raises(AttackError, match=match):
        membership_metrics(np.array(scores), np.array(member), **kw)


def test_tpr_at_unknown_level():
    m = membership_metrics(np.array([1.0, 0.0]), np.array([True, False]))
    with pytest.raises(AttackError, match="pass fprs="):
        m.tpr_at(0.05)


# ---------------------------------------------------------------------- simple attacks
def test_logit_confidence_is_stable():
    logits = torch.tensor([[2.0, 1.0, 0.5], [300.0, 0.0, 0.0], [-50.0, 0.0, 0.0]])
    y = torch.tensor([0, 0, 0])
    phi = logit_confidence(logits, y)
    p = logits[0].softmax(0)[0]
    assert phi[0] == pytest.approx(float(torch.log(p / (1 - p))), rel=1e-5)
    assert phi[1] == pytest.approx(300.0 - math.log(2.0), rel=1e-6), "p_y rounds to 1 in float32"
    assert phi[2] == pytest.approx(-50.0 - math.log(2.0), rel=1e-6)
    assert torch.isfinite(phi).all()
    with pytest.raises(AttackError, match=r"logits must be \(N, K\)"):
        logit_confidence(logits, torch.tensor([0, 1]))


def test_loss_threshold_and_gap_scores(digits_module, digits):
    x, y = digits.test.x[:50], digits.test.y[:50]
    scores = loss_threshold_scores(digits_module, x, y)
    with torch.no_grad():
        expected = -F.cross_entropy(digits_module(x), y, reduction="none")
    assert torch.allclose(scores, expected, atol=1e-5)
    gap = correctness_scores(digits_module, x, y)
    assert set(gap.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(AttackError, match="x has 50 samples but y has 3"):
        loss_threshold_scores(digits_module, x, y[:3])


# --------------------------------------------------------------------------------- LiRA
@pytest.fixture(scope="module")
def overfit(digits):
    """An MLP trained long on 150 of 300 digits (the population); the other 150 held out."""
    g = torch.Generator().manual_seed(0)
    population = digits.train.subset(torch.randperm(len(digits.train), generator=g)[:300])
    member = torch.zeros(300, dtype=torch.bool)
    member[torch.randperm(300, generator=g)[:150]] = True
    spec = zoo_spec("mlp", digits.train.shape, 10, hidden=128, depth=1)
    torch.manual_seed(100)
    target = build_model(spec)
    kw = {"epochs": 80, "lr": 3e-3, "val_fraction": 0.0}
    train_model(target, population.subset(member.nonzero().flatten()), seed=100, **kw)
    lira = LiRA(n_shadow=8, fixed_variance=True, seed=0, **kw).fit(
        population, lambda: build_model(spec)
    )
    return population, member, target, lira


def test_lira_beats_the_loss_threshold(overfit):
    population, member, target, lira = overfit
    base = membership_metrics(loss_threshold_scores(target, population.x, population.y), member)
    for online in (True, False):
        m = membership_metrics(
            lira.variant(online=online).score(target, population.x, population.y), member
        )
        assert m.auc > base.auc + 0.05, (online, m.auc, base.auc)
        assert m.tpr_at(0.01) >= 2 * base.tpr_at(0.01), (online, m.tpr_at(0.01), base.tpr_at(0.01))


def test_lira_matches_a_scipy_reference(overfit):
    """Online and offline scores, per-example and fixed variance, recomputed with scipy."""
    population, _, target, lira = overfit
    x, y = population.x[:40], population.y[:40]
    phi_t = logit_confidence(target(x).detach(), y).double().numpy()
    shadows = lira.shadow_phi_[:, :40, 0].double().numpy()
    inside = lira.in_mask_[:, :40].numpy()
    assert (inside.sum(0) == 4).all(), "balanced halves: each example IN 4 of 8 shadows"
    sigma = float(lira.pooled_std_[0])
    for fixed in (False, True):
        online = lira.variant(online=True, fixed_variance=fixed).score(target, x, y).numpy()
        offline = lira.variant(online=False, fixed_variance=fixed).score(target, x, y).numpy()
        for i in range(40):
            s_in, s_out = shadows[inside[:, i], i], shadows[~inside[:, i], i]
            sd_in = sigma if fixed else s_in.std(ddof=1)
            sd_out = sigma if fixed else s_out.std(ddof=1)
            llr = stats.norm.logpdf(phi_t[i], s_in.mean(), sd_in) - stats.norm.logpdf(
                phi_t[i], s_out.mean(), sd_out
            )
            assert online[i] == pytest.approx(llr, rel=1e-3, abs=1e-3)
            one_sided = -stats.norm.logsf(phi_t[i], s_out.mean(), sd_out)
            assert offline[i] == pytest.approx(one_sided, rel=1e-3, abs=1e-3)


def test_lira_outside_the_population(overfit, digits):
    _, _, target, lira = overfit
    x, y = digits.test.x[:20], digits.test.y[:20]
    scores = lira.variant(online=False).score(target, x, y)
    assert scores.shape == (20,) and torch.isfinite(scores).all()
    with pytest.raises(AttackError, match="not in the population given to fit"):
        lira.score(target, x, y)


def test_lira_augmented_queries(overfit):
    population, _, target, _ = overfit
    spec = zoo_spec("mlp", population.shape, 10, hidden=16, depth=1)
    lira = LiRA(n_shadow=2, epochs=2, augment=True).fit(population, lambda: build_model(spec))
    assert lira.shadow_phi_.shape == (2, 300, 5)
    assert torch.isfinite(lira.score(target, population.x, population.y)).all()


def test_lira_user_errors(digits_module, digits):
    x, y = digits.test.x[:5], digits.test.y[:5]
    with pytest.raises(NotFittedError, match=r"LiRA is not fitted yet: call LiRA\.fit"):
        LiRA().score(digits_module, x, y)
    with pytest.raises(NotFittedError, match=r"call LiRA\.fit"):
        LiRA().variant(online=False)
    with pytest.raises(AttackError, match="n_shadow >= 2"):
        LiRA(n_shadow=1).fit(digits.train, lambda: digits_module)
    with pytest.raises(AttackError, match="needs at least 4"):
        LiRA().fit(digits.train.head(3), lambda: digits_module)


# -------------------------------------------------------------------------------- probe
def _ctx(model, digits, tmp_path, recipe, **threat) -> ProbeContext:
    tm = ThreatModel(probes=["membership"], budgets=Budgets(shadow_models=4), **threat)
    return ProbeContext(
        model=model,
        data=digits,
        threat=tm,
        out_dir=tmp_path,
        recipe=recipe,
        members=Members.train_split(digits, "test: trained on the train split"),
    )


def test_probe_findings_and_report(digits, small_cnn_spec, fast_recipe, tmp_path):
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
    report = run_assessment(_ctx(model, digits, tmp_path, fast_recipe))
    by_attack = {f.attack: f for f in report.findings}
    assert set(by_attack) == {"loss-threshold", "lira-online", "lira-offline", "rmia"}
    for f in report.findings:
        assert 0 <= f.metrics["auc"] <= 1 and 0 <= f.severity <= 10
        assert {"tpr_at_0.1%_fpr", "tpr_at_1%_fpr", "tpr_at_fpr"} <= set(f.metrics)
        assert f.metrics["members"] == f.metrics["nonmembers"] == len(digits.test)
        assert len(f.series["fpr"]) == len(f.series["tpr"]) > 50
    assert by_attack["lira-online"].params["n_shadow"] == 4
    assert by_attack["lira-online"].params["fixed_variance"] is True
    assert by_attack["rmia"].params["n_reference"] == 2  # the default budget
    assert by_attack["rmia"].params["online"] is False
    assert 0 <= by_attack["rmia"].metrics["offline_a"] <= 1
    # NaN (an FPR level too low for 450 non-members) survives the JSON round trip
    assert math.isnan(by_attack["loss-threshold"].metrics["tpr_at_0.1%_fpr"])
    again = Report.model_validate_json(report.model_dump_json())
    assert again.model_dump_json() == report.model_dump_json()
    # the candidate sets are balanced, disjoint members / non-members
    _, is_member, population = MembershipProbe().sets(_ctx(model, digits, tmp_path, fast_recipe))
    assert int(is_member.sum()) == int((~is_member).sum()) == len(digits.test)
    assert len(population) == len(digits.train) + len(digits.test)


def test_membership_is_not_measured_without_members(digits, digits_model, tmp_path):
    ctx = ProbeContext(model=digits_model, data=digits, threat=ThreatModel(), out_dir=tmp_path)
    verdict = MembershipProbe().applicable(ctx)
    assert verdict.status == "not_measured" and "--members" in verdict.reason


def test_probe_label_only_and_no_spec(digits, digits_model, fast_recipe, tmp_path):
    ctx = _ctx(digits_model, digits, tmp_path, fast_recipe, access="labels")
    assert [f.attack for f in MembershipProbe().run(ctx)] == ["gap"]
    custom = LoadedModel(
        name="custom", sha256=digits_model.sha256, module=digits_model.module, form="module"
    )
    ctx = _ctx(custom, digits, tmp_path, fast_recipe)
    assert [f.attack for f in MembershipProbe().run(ctx)] == ["loss-threshold"]
    assert not ctx.warnings  # a part that did not run is not a sanity warning
    assert [s.probe for s in ctx.skipped] == ["membership/lira", "membership/rmia"]
    assert all("cannot be rebuilt untrained" in s.reason for s in ctx.skipped)
    ctx.done = {f.key for f in MembershipProbe().run(ctx)}
    assert list(MembershipProbe().run(ctx)) == []
