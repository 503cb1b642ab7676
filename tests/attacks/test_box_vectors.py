"""Attacks on feature vectors (N, D) within a per-feature Box with frozen features.

Small MLPs on sklearn's raw, unscaled wine (13 features, 3 classes) and digits (64 integer
features, 10 classes, for APGD-T and the ensemble) tabular data, trained in a fraction of a
second; the box is the training min/max of every raw feature."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from bastion.attacks.curve import pgd_curve
from bastion.attacks.evasion import (
    ATTACKS,
    Box,
    apgd,
    fgsm,
    pgd,
    robust_mask,
)
from bastion.attacks.extraction import ModelExtraction, draw_queries
from bastion.attacks.hopskipjump import hopskipjump
from bastion.attacks.poisoning import (
    backdoor_success_rate,
    default_trigger_features,
    feature_trigger,
    poison_dataset,
)
from bastion.attacks.square import square_attack
from bastion.attacks.targets import ModuleTarget
from bastion.defenses.adversarial import trades_adversary, training_adversary
from bastion.errors import AttackError, DataError

sklearn_datasets = pytest.importorskip("sklearn.datasets")


class Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return (t - self.mean) / self.std


class Case:
    """A trained MLP, the attacked rows, their labels and the per-feature box."""

    def __init__(self, name: str, frozen: list[int], hidden: int = 32) -> None:
        loader = {"wine": sklearn_datasets.load_wine, "digits": sklearn_datasets.load_digits}
        features, labels = loader[name](return_X_y=True)
        x = torch.tensor(features, dtype=torch.float32)
        y = torch.tensor(labels, dtype=torch.int64)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        x, y = x[perm], y[perm]
        torch.manual_seed(0)
        self.model = nn.Sequential(
            Standardize(x.mean(0), x.std(0).clamp_min(1e-3)),
            nn.Linear(x.shape[1], hidden),
            nn.ReLU(),
            nn.Linear(hidden, int(y.max()) + 1),
        )
        opt = torch.optim.Adam(self.model.parameters(), lr=1e-2)
        for _ in range(150):
            loss = F.cross_entropy(self.model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.model.eval()
        mask = torch.zeros(x.shape[1], dtype=torch.bool)
        mask[frozen] = True
        self.box = Box(x.min(0).values, x.max(0).values, mask)
        self.pool, self.x_all, self.y_all = x[80:], x, y
        self.x, self.y = x[:60], y[:60]

    @torch.no_grad()
    def accuracy(self, x: torch.Tensor) -> float:
        return float((self.model(x).argmax(1) == self.y).float().mean())


@pytest.fixture(scope="module")
def wine() -> Case:
    return Case("wine", frozen=[0, 12])  # alcohol and proline (the widest feature) frozen


@pytest.fixture(scope="module")
def digits_vec() -> Case:
    return Case("digits", frozen=[10, 20, 30, 43])


def check_valid(case: Case, adv: torch.Tensor, eps: float | None = None, norm: str = "inf"):
    x, box = case.x, case.box
    assert adv.shape == x.shape
    assert bool((adv >= box.lo).all()) and bool((adv <= box.hi).all()), "left the box"
    assert torch.equal(adv[:, box.frozen], x[:, box.frozen]), "moved a frozen feature"
    if eps is not None:
        dist = (adv - x).abs().amax(1) if norm == "inf" else (adv - x).norm(dim=1)
        assert float(dist.max()) <= eps * (1 + 1e-5) + 1e-6


# ε in raw feature units: wine's narrow features (hue, nonflavanoids: std ≈ 0.1–0.2) make
# 0.3 a large step for them; digits' pixels span 0..16.
WHITE_BOX = [
    ("fgsm", "wine", "inf", 0.3, {}),
    ("fgsm", "wine", "2", 1.0, {}),
    ("pgd", "wine", "inf", 0.3, {"steps": 10}),
    ("pgd", "wine", "2", 1.0, {"steps": 10}),
    ("apgd-ce", "wine", "inf", 0.3, {"steps": 20}),
    ("apgd-ce", "wine", "2", 1.0, {"steps": 20}),
    ("apgd-t", "digits", "inf", 3.0, {"steps": 20, "n_target_classes": 3}),
    ("apgd-t", "digits", "2", 10.0, {"steps": 20, "n_target_classes": 3}),
    ("ensemble", "digits", "inf", 3.0, {"steps": 20, "n_target_classes": 3}),
]


@pytest.mark.parametrize(("attack", "data", "norm", "eps", "kw"), WHITE_BOX)
def test_white_box_attacks_respect_the_box(request, attack, data, norm, eps, kw):
    case = request.getfixturevalue("wine" if data == "wine" else "digits_vec")
    gen = torch.Generator().manual_seed(0)
    adv = ATTACKS[attack](
        case.model, case.x, case.y, eps=eps, norm=norm, bounds=case.box, generator=gen, **kw
    )
    check_valid(case, adv, eps, norm)
    clean = case.accuracy(case.x)
    assert clean > 0.9
    assert case.accuracy(adv) < clean - 0.2, (clean, case.accuracy(adv))


@pytest.mark.parametrize(("norm", "eps"), [("inf", 0.3), ("2", 1.0)])
def test_square_on_vectors(wine, norm, eps):
    gen = torch.Generator().manual_seed(0)
    res = square_attack(
        ModuleTarget(wine.model),
        wine.x,
        wine.y,
        eps=eps,
        norm=norm,
        max_queries=200,
        bounds=wine.box,
        generator=gen,
    )
    check_valid(wine, res.x_adv, eps, norm)
    assert int(res.queries.max()) <= 200
    fooled = wine.model(res.x_adv).argmax(1) != wine.y
    assert torch.equal(fooled, res.success)
    assert wine.accuracy(res.x_adv) < wine.accuracy(wine.x) - 0.2


def test_square_on_vectors_with_plain_bounds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.rand(12, 20)
    y = model(x).argmax(1)
    res = square_attack(model, x, y, eps=0.2, max_queries=100)
    assert bool((res.x_adv >= 0).all() and (res.x_adv <= 1).all())
    assert float((res.x_adv - x).abs().max()) <= 0.2 + 1e-6
    assert res.success.any()


@pytest.mark.parametrize("norm", ["2", "inf"])
def test_hopskipjump_on_vectors(wine, norm):
    res = hopskipjump(
        ModuleTarget(wine.model, kind="labels"),
        wine.x,
        wine.y,
        norm=norm,
        max_queries=300,
        bounds=wine.box,
        generator=torch.Generator().manual_seed(0),
    )
    check_valid(wine, res.x_adv)
    assert res.success.float().mean() > 0.8
    with torch.no_grad():
        pred = wine.model(res.x_adv).argmax(1)
    assert bool((pred[res.success] != wine.y[res.success]).all())
    # the search shrinks the distance from the first adversarial points
    start = hopskipjump(
        ModuleTarget(wine.model, kind="labels"),
        wine.x,
        wine.y,
        norm=norm,
        max_queries=300,
        max_iter=0,
        bounds=wine.box,
        generator=torch.Generator().manual_seed(0),
    )
    both = res.success & start.success
    assert res.distance(wine.x, norm)[both].median() < start.distance(wine.x, norm)[both].median()


def test_robust_mask_applies_post_before_the_check(digits_vec):
    case, calls = digits_vec, []

    def round_features(adv: torch.Tensor, x_clean: torch.Tensor) -> torch.Tensor:
        assert adv.shape == x_clean.shape
        out = adv.round().clamp(case.box.lo, case.box.hi)
        calls.append((out, x_clean))
        return out

    kw = {"eps": 2.0, "bounds": case.box, "steps": 10, "generator": None}
    mask = robust_mask(case.model, case.x, case.y, attack="pgd", post=round_features, **kw)
    ((judged, x_clean),) = calls
    correct = (case.model(case.x).argmax(1) == case.y).nonzero().flatten()
    assert torch.equal(x_clean, case.x[correct])
    assert torch.equal(judged, judged.round())
    with torch.no_grad():
        expected = torch.zeros_like(mask)
        expected[correct] = case.model(judged).argmax(1) == case.y[correct]
    assert torch.equal(mask, expected)
    assert not mask.all()
    # undoing the attack in post leaves every clean-correct point robust
    undo = robust_mask(case.model, case.x, case.y, attack="pgd", post=lambda a, x: x, **kw)
    assert torch.equal(undo.nonzero().flatten(), correct)
    with pytest.raises(AttackError, match="post must return a tensor shaped like its input"):
        robust_mask(
            case.model,
            case.x,
            case.y,
            attack="fgsm",
            eps=2.0,
            bounds=case.box,
            post=lambda a, x: a[:, :3],
        )


@pytest.mark.parametrize(
    "attack",
    [
        lambda c, x: fgsm(c.model, x, c.y, eps=0.1, bounds=c.box),
        lambda c, x: pgd(c.model, x, c.y, eps=0.1, bounds=c.box),
        lambda c, x: apgd(c.model, x, c.y, eps=0.1, bounds=c.box),
        lambda c, x: square_attack(c.model, x, c.y, eps=0.1, bounds=c.box),
        lambda c, x: hopskipjump(c.model, x, c.y, bounds=c.box),
    ],
    ids=["fgsm", "pgd", "apgd", "square", "hopskipjump"],
)
def test_inputs_outside_the_per_feature_box_are_refused(wine, attack):
    x = wine.x.clone()
    x[3, 5] = wine.box.hi[5] + 1.0
    with pytest.raises(AttackError, match="outside the per-feature bounds"):
        attack(wine, x)


def test_pgd_curve_on_vectors_in_a_box(wine):
    robust = pgd_curve(wine.model, wine.x, wine.y, [0.05, 0.15, 0.3], bounds=wine.box)
    curve = robust.float().mean(1)
    assert bool((robust[1:] <= robust[:-1]).all())  # monotone in ε
    assert curve[-1] < wine.accuracy(wine.x) - 0.2


def test_training_adversaries_respect_the_box(wine):
    gen = torch.Generator().manual_seed(0)
    adv = training_adversary(
        wine.model, wine.x, wine.y, eps=0.3, steps=3, step_size=0.1, bounds=wine.box, generator=gen
    )
    check_valid(wine, adv, 0.3)
    adv = trades_adversary(
        wine.model, wine.x, eps=0.3, steps=3, step_size=0.1, bounds=wine.box, generator=gen
    )
    check_valid(wine, adv, 0.3)


@pytest.mark.parametrize("source", ["pool", "transformed", "noise"])
def test_extraction_queries_for_vectors(wine, source):
    pool, box = wine.pool, wine.box
    x = draw_queries(source, pool, 300, bounds=box, generator=torch.Generator().manual_seed(0))
    assert x.shape == (300, pool.shape[1])
    assert bool((x >= box.lo).all() and (x <= box.hi).all())
    for j in box.frozen.nonzero().flatten().tolist():  # frozen values come from pool rows
        assert bool(torch.isin(x[:, j], pool[:, j]).all())
    if source != "pool":
        assert not torch.allclose(x.mean(0), pool.mean(0), rtol=0.02)


def test_jacobian_extraction_on_vectors(wine):
    target = ModuleTarget(wine.model)
    build = lambda: nn.Sequential(  # noqa: E731
        Standardize(wine.pool.mean(0), wine.pool.std(0)),
        nn.Linear(13, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )
    est = ModelExtraction(
        build,
        source="jacobian",
        budget=120,
        seed_size=30,
        bounds=wine.box,
        min_steps=50,
        max_steps=100,
    )
    est.fit(target, wine.pool)
    assert target.queries == est.queries_ == 120
    q = est.x_queried_
    assert bool((q >= wine.box.lo).all() and (q <= wine.box.hi).all())
    assert est.fidelity(wine.x, wine.model(wine.x).argmax(1)) > 0.6


def test_feature_trigger(wine):
    box = wine.box
    features = default_trigger_features(wine.x, bounds=box)
    widths = (box.hi - box.lo).masked_fill(box.frozen, -1)
    assert torch.equal(features, widths.topk(3).indices.sort().values)
    assert not box.frozen[features].any()
    out = feature_trigger(wine.x, features=features, bounds=box)
    assert torch.equal(out[:, features], box.hi[features].expand(len(out), -1))
    rest = torch.ones(13, dtype=torch.bool)
    rest[features] = False
    assert torch.equal(out[:, rest], wine.x[:, rest])
    one = feature_trigger(wine.x[0], features=[1, 2], value=torch.tensor([1.0, 2.0]), bounds=box)
    assert one.shape == (13,) and one[1] == 1.0 and one[2] == 2.0
    with pytest.raises(AttackError, match="outside the bounds of their features"):
        feature_trigger(wine.x, features=[1], value=1e6, bounds=box)
    with pytest.raises(AttackError, match="must not be frozen"):
        feature_trigger(wine.x, features=[0], bounds=box)
    with pytest.raises(AttackError, match="flat indices in"):
        feature_trigger(wine.x, features=[13], bounds=box)


def test_feature_trigger_backdoor_on_a_tabular_dataset(wine):
    from bastion.data.dataset import Dataset

    box = Box(wine.box.lo, wine.box.hi)
    try:
        data = Dataset(
            name="wine", x=wine.x_all, y=wine.y_all, class_names=["a", "b", "c"], bounds=box
        )
    except (DataError, TypeError) as exc:  # datasets that only hold images
        pytest.skip(f"this Dataset holds no feature vectors: {exc}")
    p = poison_dataset(data, rate=0.2, target=0, generator=torch.Generator().manual_seed(0))
    assert p.trigger == "features" and p.patch_size == 0 and p.features is not None
    assert torch.equal(p.trigger_value, box.hi[p.features])
    assert torch.equal(
        p.dataset.x[p.indices][:, p.features], box.hi[p.features].expand(len(p.indices), -1)
    )
    assert bool((p.dataset.y[p.indices] == 0).all())
    untouched = ~p.mask
    assert torch.equal(p.dataset.x[untouched], data.x[untouched])
    # a model trained on the poisoned rows carries the backdoor
    torch.manual_seed(0)
    x, y = p.dataset.x, p.dataset.y
    model = nn.Sequential(
        Standardize(x.mean(0), x.std(0)), nn.Linear(13, 32), nn.ReLU(), nn.Linear(32, 3)
    )
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    asr = backdoor_success_rate(
        model, wine.x, wine.y, target=0, bounds=box, features=p.features, value=p.trigger_value
    )
    base = backdoor_success_rate(
        wine.model, wine.x, wine.y, target=0, bounds=box, features=p.features
    )
    assert asr > 0.8 and asr > base + 0.3, (asr, base)
