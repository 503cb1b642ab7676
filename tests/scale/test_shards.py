"""The shard contract without Ray: a probe's shards are checked (unique ids, needs only
earlier shards), a probe that does not shard is one shard, the evasion and membership
probes list their shards, and a LiRA fitted shadow by shadow (as the membership probe's
shards do) is the one ``LiRA.fit`` gives, to the bit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from bastion.assess.api import assessment_context
from bastion.assess.blackbox_probe import BlackBoxProbe
from bastion.assess.evasion_probe import EvasionProbe
from bastion.assess.executor import ProbeResult
from bastion.assess.membership_probe import MembershipProbe
from bastion.assess.probe import WHOLE, ProbeContext, Shard, probe_shards
from bastion.assess.schema import Finding
from bastion.attacks.lira import LiRA
from bastion.data import load_dataset
from bastion.errors import AssessmentError, AttackError
from bastion.models.io import load_model
from bastion.models.zoo import build_model, zoo_spec
from tests.scale.conftest import WHITE_BOX


class Listed:
    """A probe that shards as it is told."""

    name = "listed"

    def __init__(self, shards: list[Shard]) -> None:
        self._shards = shards

    def applicable(self, ctx: ProbeContext) -> None:
        return None

    def run(self, ctx: ProbeContext) -> Iterator[Finding]:
        return iter(())

    def shards(self, ctx: ProbeContext) -> list[Shard]:
        return self._shards

    def run_shard(self, ctx: ProbeContext, shard: Shard) -> Iterator[Finding]:
        return iter(())


def test_shards_are_checked_and_a_plain_probe_is_one(digits_mlp, tmp_path):
    ctx = assessment_context(load_model(digits_mlp), "digits", WHITE_BOX, tmp_path)
    assert probe_shards(BlackBoxProbe(), ctx) == [WHOLE]
    good = [Shard("a"), Shard("b", needs=("a",))]
    assert probe_shards(Listed(good), ctx) == good
    with pytest.raises(AssessmentError, match="needs b, which is not an earlier shard"):
        probe_shards(Listed([Shard("a", needs=("b",)), Shard("b")]), ctx)
    with pytest.raises(AssessmentError, match="lists shard 'a' twice"):
        probe_shards(Listed([Shard("a"), Shard("a")]), ctx)


def test_evasion_and_membership_shards(digits_mlp, tmp_path):
    threat = WHITE_BOX.model_copy(
        update={
            "eps": [0.05, 0.1],
            "budgets": WHITE_BOX.budgets.model_copy(update={"shadow_models": 3}),
        }
    )
    ctx = assessment_context(
        load_model(digits_mlp), "digits", threat, tmp_path, members="train-split"
    )
    assert probe_shards(EvasionProbe(), ctx) == [
        Shard("fgsm@0.05"),
        Shard("fgsm@0.1"),
        Shard("pgd@0.05"),
        Shard("pgd@0.1"),
        Shard("curve"),
        Shard("sanity-checks", needs=("pgd@0.1",)),  # the strongest attack at the largest ε
    ]
    shadows = ("lira-shadow-0", "lira-shadow-1", "lira-shadow-2")
    assert probe_shards(MembershipProbe(), ctx) == [
        Shard("loss-threshold"),
        *(Shard(s) for s in shadows),
        Shard("lira", needs=shadows),
        Shard("rmia"),
    ]
    ctx.model.rebuild = None  # no shadow can be trained: LiRA's shard only records the skip
    assert [s.id for s in probe_shards(MembershipProbe(), ctx)] == [
        "loss-threshold",
        "lira",
        "rmia",
    ]
    labels = ctx.threat.model_copy(update={"access": "labels"})
    ctx.threat = labels
    assert probe_shards(MembershipProbe(), ctx) == [Shard("gap")]


def test_lira_shadow_by_shadow_equals_lira_fit():
    torch.set_num_threads(1)
    data = load_dataset("digits").train
    population = data.subset(torch.arange(120))
    spec = zoo_spec("mlp", data.shape, data.num_classes, hidden=16)

    def lira() -> LiRA:
        return LiRA(n_shadow=3, epochs=1, batch_size=32, lr=1e-2, seed=5, fixed_variance=True)

    fitted = lira().fit(population, lambda: build_model(spec))
    apart = lira()  # each shadow trained on its own, as the shards do
    shadows = [apart.train_shadow(population, lambda: build_model(spec), k) for k in range(3)]
    phis = [apart.confidences(m, population) for m in shadows]
    sharded = lira().from_shadows(population, phis)
    assert torch.equal(sharded.in_mask_, fitted.in_mask_)
    assert torch.equal(sharded.shadow_phi_, fitted.shadow_phi_)
    assert torch.equal(sharded.pooled_std_, fitted.pooled_std_)
    target = build_model(spec)
    x, y = population.x[:40], population.y[:40]
    for online in (True, False):
        a = sharded.variant(online=online).score(target, x, y)
        b = fitted.variant(online=online).score(target, x, y)
        assert torch.equal(a, b)
    with pytest.raises(AttackError, match="has 2 of its 3 shadow models"):
        lira().from_shadows(population, phis[:2])


def test_a_shard_record_keeps_its_outputs():
    """A LiRA shadow's confidences survive the checkpoint's JSON to the bit."""
    phi = torch.randn(7, 1, generator=torch.Generator().manual_seed(0))
    part = ProbeResult(
        probe="membership",
        shard="lira-shadow-0",
        outputs={
            "lira-shadow-0": phi,
            "lira-shadow-0.seconds": torch.tensor(1.5, dtype=torch.float64),
        },
        robust_masks={0.1: torch.tensor([True, False])},
    )
    back = ProbeResult.from_record(json.loads(json.dumps(part.to_record())))
    assert back.shard == "lira-shadow-0"
    assert torch.equal(back.outputs["lira-shadow-0"], phi)
    assert back.outputs["lira-shadow-0.seconds"].shape == ()
    assert float(back.outputs["lira-shadow-0.seconds"]) == 1.5
    assert torch.equal(back.robust_masks[0.1], part.robust_masks[0.1])
