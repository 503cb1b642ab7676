"""The attack space (ε absolute / relative, frozen and integer features), the members
record and the preflight checks, on small hand-made specs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bastion.assess.api import as_bundle, resolve_members
from bastion.assess.checks import chance_rate, check_clean_accuracy, check_compatible
from bastion.assess.space import AttackSpace
from bastion.attacks.evasion import robust_mask
from bastion.data.spec import InputSpec, tabular_spec_from
from bastion.errors import AssessmentError, DataError
from bastion.models.loaded import Capabilities, LoadedModel


def spec(**kw) -> InputSpec:
    base = dict(
        modality="tabular",
        shape=[3],
        lower=[0.0, -10.0, 5.0],
        upper=[1.0, 10.0, 5.0],
        integer=[1],
        frozen=[0],
    )
    return InputSpec(**{**base, **kw})


def test_relative_space_scales_each_feature_and_freezes_constant_ones():
    sp = AttackSpace.build(spec())
    assert sp.mode == "relative"
    x = torch.tensor([[0.5, 2.0, 5.0]])
    z = sp.to_z(x)
    assert torch.allclose(sp.from_z(z), x)
    assert torch.allclose(z, torch.tensor([[0.5, 0.6, 0.0]]))
    # feature 0 is frozen, feature 2 has zero range: both held at the clean value
    moved = sp.box.clip(z + 0.3, z)
    assert moved[0, 0] == z[0, 0] and moved[0, 2] == z[0, 2] and moved[0, 1] == pytest.approx(0.9)


def test_absolute_space_is_the_identity_with_per_feature_bounds():
    sp = AttackSpace.build(spec(), "absolute")
    x = torch.tensor([[0.5, 2.0, 5.0]])
    assert sp.identity and torch.equal(sp.to_z(x), x)
    assert torch.equal(sp.box.hi, torch.tensor([1.0, 10.0, 5.0]))


def test_integer_features_stay_whole_and_inside_the_ball():
    sp = AttackSpace.build(spec(frozen=[]), "absolute")
    x = torch.tensor([[0.5, 2.0, 5.0]])
    adv = torch.tensor([[0.7, 2.9, 5.0]])
    out = sp.finalize(adv, x)
    assert out[0, 1] == 2.0  # truncated towards the clean value, not rounded up to 3
    assert out[0, 0] == pytest.approx(0.7)
    adv = torch.tensor([[0.7, 0.6, 5.0]])
    assert sp.finalize(adv, x)[0, 1] == 1.0


def test_integer_rounding_can_undo_an_adversarial_example():
    """A model that flips class only between integers: the re-check must catch it."""

    class Threshold(nn.Module):
        def forward(self, x):
            s = x[:, 1:2] - 2.4
            return torch.cat([-s, s], 1) * 10

    sp = AttackSpace.build(spec(frozen=[]), "absolute")
    x = torch.tensor([[0.5, 2.0, 5.0]])
    y = torch.tensor([0])
    kw = dict(attack="pgd", eps=0.9, bounds=sp.box, steps=10)
    assert not robust_mask(Threshold(), x, y, **kw)[0]  # fooled at 2.4 < x1 <= 2.9
    assert robust_mask(Threshold(), x, y, post=sp.finalize, **kw)[0]  # 2.x is not a value


def test_tabular_spec_defaults_detect_integer_columns():
    s = tabular_spec_from(torch.tensor([[1.0, 0.5], [3.0, 0.25]]))
    assert s.integer == [0] and s.lower == [1.0, 0.25] and s.bounds_source == "train-min-max"


def test_bad_specs_are_refused():
    with pytest.raises(ValueError, match="lower bound above upper bound at feature 1"):
        spec(lower=[0.0, 20.0, 5.0])
    with pytest.raises(ValueError, match="need 1 or 3 values"):
        spec(lower=[0.0, 1.0])
    with pytest.raises(ValueError, match="frozen feature index 7"):
        spec(frozen=[7])


def _bundle():
    x = torch.rand(50, 3)
    y = (x[:, 0] > 0.5).long()
    return as_bundle((x.numpy(), y.numpy()))


def _loaded(module, k=2, shape=None):
    return LoadedModel(
        name="m",
        sha256="0" * 64,
        form="module",
        module=module,
        capabilities=Capabilities(gradients=True, num_classes=k, input_shape=shape),
    )


def test_members_map_file_rows_and_refuse_unknown_rows(tmp_path):
    data = _bundle()
    rows = data.train.rows[:5].tolist() + data.test.rows[:2].tolist()
    f = tmp_path / "m.txt"
    f.write_text("\n".join(map(str, rows)))
    m = resolve_members(f, _loaded(nn.Linear(3, 2)), data)
    assert int(m.train.sum()) == 5 and int(m.test.sum()) == 2
    f.write_text("[1, 2, 999]")
    with pytest.raises(DataError, match="member row 999 is not in the data"):
        resolve_members(f, _loaded(nn.Linear(3, 2)), data)
    f.write_text("one\ntwo")
    with pytest.raises(DataError, match="expected row indices"):
        resolve_members(f, _loaded(nn.Linear(3, 2)), data)
    assert resolve_members(None, _loaded(nn.Linear(3, 2)), data) is None


def test_preflight_finds_mismatches():
    data = _bundle()
    with pytest.raises(AssessmentError, match=r"takes inputs of shape \(4,\)"):
        check_compatible(_loaded(nn.Linear(4, 2), shape=[4]), data)
    with pytest.raises(AssessmentError, match="cannot run on the data's samples"):
        check_compatible(_loaded(nn.Linear(4, 2)), data)
    with pytest.raises(AssessmentError, match="labels up to 1 but model m has 1 classes"):
        check_compatible(_loaded(nn.Linear(3, 1), k=1), data)
    assert check_compatible(_loaded(nn.Linear(3, 2)), data) == 2


def test_chance_guard_uses_the_majority_class_rate():
    y = torch.tensor([0] * 90 + [1] * 10)
    assert chance_rate(y) == 0.9
    with pytest.raises(AssessmentError, match=r"below 95.0% \(majority-class rate 90.0%"):
        check_clean_accuracy(0.92, y, None, "m")
    check_clean_accuracy(0.96, y, None, "m")
    with pytest.raises(AssessmentError, match=r"floor 99\.0%"):
        check_clean_accuracy(0.96, y, 0.99, "m")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_eps_is_refused(bad):
    from bastion.assess.schema import ThreatModel

    with pytest.raises(ValueError, match="finite"):
        ThreatModel(eps=[bad])
    with pytest.raises(ValueError, match="finite"):
        ThreatModel(curve_eps=[0.1, bad])


def test_a_bad_frozen_index_is_one_line(tmp_path):
    from bastion.data import load_dataset
    from bastion.data.loaders import DataOptions

    p = tmp_path / "t.csv"
    p.write_text("label,a,b\n0,1,2\n1,3,4\n0,5,6\n1,7,8\n")
    with pytest.raises(
        DataError, match=r"^invalid input spec: frozen feature index 9 outside 0\.\.1$"
    ):
        load_dataset(str(p), options=DataOptions(frozen=[9]))
