"""BadNets and label flipping: the trigger, the poisoned sets, retraining effects, the probe."""

from __future__ import annotations

import json

import pytest
import torch

from bastion.assess.poisoning_probe import PoisoningProbe, load_indices
from bastion.assess.probe import ProbeContext
from bastion.assess.runner import run_assessment
from bastion.assess.schema import ThreatModel
from bastion.attacks.poisoning import (
    apply_trigger,
    backdoor_success_rate,
    flip_labels,
    poison_dataset,
)
from bastion.errors import AttackError
from bastion.models.io import LoadedModel
from bastion.models.train import accuracy, train_model
from bastion.models.zoo import build_model, zoo_spec


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- trigger
@pytest.mark.parametrize(
    ("location", "rows", "cols"),
    [
        ("bottom-right", slice(5, 8), slice(5, 8)),
        ("top-left", slice(0, 3), slice(0, 3)),
        ("top-right", slice(0, 3), slice(5, 8)),
        ("bottom-left", slice(5, 8), slice(0, 3)),
    ],
)
def test_trigger_stamps_only_the_patch(digits, location, rows, cols):
    x = digits.test.x[:5]
    before = x.clone()
    out = apply_trigger(x, patch_size=3, value=0.7, location=location)
    assert torch.equal(x, before), "the input must not be modified"
    assert out.shape == x.shape
    assert (out[..., rows, cols] == 0.7).all()
    outside = torch.ones_like(x, dtype=torch.bool)
    outside[..., rows, cols] = False
    assert torch.equal(out[outside], x[outside])


def test_trigger_single_image_and_bounds():
    x = torch.rand(1, 6, 6) * 2 - 1
    out = apply_trigger(x, patch_size=2, value=-1.0, bounds=(-1.0, 1.0))
    assert out.shape == (1, 6, 6)
    assert out.min() >= -1 and out.max() <= 1
    assert (out[0, 4:, 4:] == -1.0).all()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"location": "centre"}, "unknown trigger location"),
        ({"patch_size": 9}, r"patch_size must be an integer in \[1, 8\]"),
        ({"patch_size": 0}, "patch_size must be"),
        ({"value": 2.0}, r"outside the input bounds \[0.0, 1.0\]"),
    ],
)
def test_trigger_errors(digits, kwargs, match):
    with pytest.raises(AttackError, match=match):
        apply_trigger(digits.test.x[:2], **kwargs)


def test_trigger_shape_error():
    with pytest.raises(AttackError, match=r"shape \(N, C, H, W\)"):
        apply_trigger(torch.zeros(8, 8))


# ------------------------------------------------------------------------ poisoned sets
def test_poison_dataset_ground_truth(digits):
    train = digits.train
    p = poison_dataset(train, rate=0.05, target=3, patch_size=2, generator=gen())
    n = round(0.05 * len(train))
    assert len(p.indices) == n and p.indices.dtype == torch.long
    assert torch.equal(p.indices, p.indices.sort().values)
    assert (p.original_labels != 3).all(), "rows of the target class are never chosen"
    assert torch.equal(p.original_labels, train.y[p.indices])
    assert (p.dataset.y[p.indices] == 3).all()
    assert (p.dataset.x[p.indices][..., -2:, -2:] == train.bounds[1]).all()
    clean = ~p.mask
    assert torch.equal(p.dataset.x[clean], train.x[clean])
    assert torch.equal(p.dataset.y[clean], train.y[clean])
    assert (p.target, p.patch_size, p.kind) == (3, 2, "badnets")
    again = poison_dataset(train, rate=0.05, target=3, patch_size=2, generator=gen())
    assert torch.equal(again.indices, p.indices), "same generator seed, same rows"


@pytest.mark.parametrize("rate", [0.0, 1.0, -0.1, 1.5])
def test_poison_rate_must_be_a_fraction(digits, rate):
    with pytest.raises(AttackError, match=r"rate must be in \(0, 1\)"):
        poison_dataset(digits.train, rate=rate, target=0)
    with pytest.raises(AttackError, match=r"rate must be in \(0, 1\)"):
        flip_labels(digits.train, rate=rate)


@pytest.mark.parametrize("target", [10, -1])
def test_poison_target_out_of_range(digits, target):
    with pytest.raises(AttackError, match=r"target class .* out of range: choose in \[0, 9\]"):
        poison_dataset(digits.train, rate=0.1, target=target)


def test_poison_rate_too_high_for_other_classes(digits):
    small = digits.train.subset((digits.train.y <= 1).nonzero().flatten())
    with pytest.raises(AttackError, match="lower the rate"):
        poison_dataset(small, rate=0.9, target=0)


def test_flip_labels_changes_exactly_the_indices(digits):
    p = flip_labels(digits.train, rate=0.2, generator=gen(1))
    changed = (p.dataset.y != digits.train.y).nonzero().flatten()
    assert torch.equal(changed, p.indices)
    assert len(p.indices) == round(0.2 * len(digits.train))
    assert p.target is None and p.kind == "label_flip"
    assert torch.equal(p.dataset.x, digits.train.x)
    # the new labels cover the other classes, not one fixed class
    assert len(p.dataset.y[p.indices].unique()) == digits.train.num_classes


# ------------------------------------------------------------------ retraining effects
def _train(spec, data, epochs=8):
    torch.manual_seed(0)
    model = build_model(spec)
    train_model(model, data, epochs=epochs, seed=0, lr=2e-3)
    return model


def test_badnets_success_well_above_chance(digits, small_cnn_spec):
    poisoned = poison_dataset(digits.train, rate=0.1, target=0, generator=gen())
    clean_model = _train(small_cnn_spec, digits.train)
    bad_model = _train(small_cnn_spec, poisoned.dataset)
    x, y = digits.test.x, digits.test.y
    asr = backdoor_success_rate(bad_model, x, y, target=0, patch_size=3)
    base = backdoor_success_rate(clean_model, x, y, target=0, patch_size=3)
    assert asr > 0.8, asr
    assert base < 0.3, base
    assert accuracy(bad_model, x, y) > accuracy(clean_model, x, y) - 0.08, "clean accuracy kept"


def test_label_flipping_lowers_accuracy(digits):
    spec = zoo_spec("mlp", digits.train.shape, 10, hidden=32)
    flipped = flip_labels(digits.train, rate=0.6, generator=gen())
    clean_acc = accuracy(_train(spec, digits.train, 6), digits.test.x, digits.test.y)
    flip_acc = accuracy(_train(spec, flipped.dataset, 6), digits.test.x, digits.test.y)
    assert flip_acc < clean_acc - 0.05, (clean_acc, flip_acc)


def test_backdoor_success_errors(digits_module, digits):
    x = digits.test.x[:10]
    with pytest.raises(AttackError, match="every test label is the target class"):
        backdoor_success_rate(
            digits_module, x, torch.zeros(10, dtype=torch.long), target=0, patch_size=3
        )
    with pytest.raises(AttackError, match="x_test has 10 samples but y_test has 3"):
        backdoor_success_rate(digits_module, x, digits.test.y[:3], target=0, patch_size=3)


# -------------------------------------------------------------------------------- probe
def test_probe_needs_can_poison(digits, digits_model, tmp_path):
    def ctx(threat):
        return ProbeContext(model=digits_model, data=digits, threat=threat, out_dir=tmp_path)

    verdict = PoisoningProbe().applicable(ctx(ThreatModel()))
    assert verdict.status == "excluded" and "can_poison" in verdict.reason
    assert PoisoningProbe().applicable(ctx(ThreatModel(can_poison=True))) is None


def test_probe_findings_artifacts_and_resume(digits, digits_model, fast_recipe, tmp_path):
    threat = ThreatModel(can_poison=True, poison_rate=0.1, probes=["poisoning"])
    ctx = ProbeContext(
        model=digits_model, data=digits, threat=threat, out_dir=tmp_path, recipe=fast_recipe
    )
    report = run_assessment(ctx)
    by_attack = {f.attack: f for f in report.findings}
    assert set(by_attack) == {"badnets", "label-flip"}
    bad = by_attack["badnets"]
    assert bad.metrics["attack_success_rate"] > bad.metrics["clean_model_success_rate"] + 0.3
    assert bad.severity > 3
    assert bad.params["rate"] == 0.1 and bad.params["target"] == 0
    path = tmp_path / bad.artifacts["poisoned_indices"]
    record = json.loads(path.read_text())
    assert record["kind"] == "badnets" and record["target"] == 0
    expected = poison_dataset(digits.train, rate=0.1, target=0, generator=ctx.generator(31))
    assert torch.equal(load_indices(path), expected.indices)
    flip = by_attack["label-flip"]
    assert flip.metrics["n_poisoned"] == round(0.1 * len(digits.train))
    assert (
        abs(
            flip.metrics["accuracy_change"]
            - (flip.metrics["clean_accuracy"] - flip.metrics["clean_accuracy_baseline"])
        )
        < 1e-9
    )
    # resume: nothing is redone when both findings are already done
    ctx.done = {f.key for f in report.findings}
    assert list(PoisoningProbe().run(ctx)) == []


def test_probe_skips_models_without_spec(digits, digits_model, tmp_path):
    model = LoadedModel(
        name="custom", sha256=digits_model.sha256, module=digits_model.module, form="module"
    )
    ctx = ProbeContext(
        model=model, data=digits, threat=ThreatModel(can_poison=True), out_dir=tmp_path
    )
    reason = PoisoningProbe().applicable(ctx)
    assert isinstance(reason, str) and "cannot be rebuilt untrained" in reason
