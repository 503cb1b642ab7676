import pickle

import pytest
import torch
from torch import nn

from bastion.errors import ModelError, UnsafeModelError
from bastion.models.io import load_model
from bastion.models.train import accuracy, train_model
from bastion.models.zoo import build_model, zoo_spec


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28)])
def test_zoo_shapes(name, shape):
    m = build_model(zoo_spec(name, shape, 10))
    assert m(torch.zeros(2, *shape)).shape == (2, 10)


def test_unknown_model_and_params():
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        build_model(zoo_spec("resnet", (1, 8, 8), 10))
    with pytest.raises(ModelError, match="bad parameters for model 'mlp'"):
        build_model(zoo_spec("mlp", (1, 8, 8), 10, depthh=3))


def test_training_learns_and_is_seeded(digits):
    accs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = build_model(zoo_spec("mlp", (1, 8, 8), 10, hidden=32))
        res = train_model(m, digits.train, epochs=3, lr=5e-3, seed=3)
        accs.append(accuracy(m, digits.test.x, digits.test.y))
        assert res.epochs_run == 3 and len(res.val_accuracy) == 3
    assert accs[0] == accs[1] and accs[0] > 0.8


def test_resume_from_checkpoint(digits, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    torch.manual_seed(5)
    m1 = build_model(zoo_spec("mlp", (1, 8, 8), 10, hidden=16))
    train_model(m1, digits.train, epochs=2, seed=1, checkpoint=ckpt)
    m2 = build_model(zoo_spec("mlp", (1, 8, 8), 10, hidden=16))
    res = train_model(m2, digits.train, epochs=3, seed=1, checkpoint=ckpt)
    assert res.resumed_from == 2 and res.epochs_run == 3 and len(res.train_loss) == 3
    torch.manual_seed(5)
    m3 = build_model(zoo_spec("mlp", (1, 8, 8), 10, hidden=16))
    full = train_model(m3, digits.train, epochs=3, seed=1)
    assert full.train_loss == pytest.approx(res.train_loss)


def test_save_load_roundtrip(digits_model_dir, digits):
    loaded = load_model(digits_model_dir)
    assert (digits_model_dir / "model.safetensors").exists() and loaded.spec.name == "cnn"
    assert len(loaded.sha256) == 64
    assert accuracy(loaded.module, digits.test.x, digits.test.y) > 0.85


def test_state_dict_pt_is_loaded_through_allowlist(digits_model_dir, tmp_path):
    loaded = load_model(digits_model_dir)
    torch.save(loaded.module.state_dict(), tmp_path / "model.pt")
    (tmp_path / "spec.json").write_text((digits_model_dir / "spec.json").read_text())
    again = load_model(tmp_path)
    x = torch.rand(3, 1, 8, 8)
    assert torch.equal(again.module(x), loaded.module(x))


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_pickle_with_code_is_refused(digits_model_dir, tmp_path):
    (tmp_path / "spec.json").write_text((digits_model_dir / "spec.json").read_text())
    with open(tmp_path / "model.pt", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(UnsafeModelError, match="refused"):
        load_model(tmp_path)


def test_whole_module_pickle_is_refused(tmp_path, digits_model_dir):
    (tmp_path / "spec.json").write_text((digits_model_dir / "spec.json").read_text())
    torch.save(nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(UnsafeModelError, match="allowlist"):
        load_model(tmp_path)


def test_model_errors(tmp_path, digits_model_dir):
    with pytest.raises(ModelError, match="model not found"):
        load_model(tmp_path / "missing")
    with pytest.raises(ModelError, match=r"no spec.json"):
        load_model(tmp_path)
    (tmp_path / "spec.json").write_text(
        '{"name": "mlp", "params": {"input_shape": [1, 8, 8], "num_classes": 10}}'
    )
    (tmp_path / "model.safetensors").write_bytes(
        (digits_model_dir / "model.safetensors").read_bytes()
    )
    with pytest.raises(ModelError, match="weights do not match"):
        load_model(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="not a valid safetensors"):
        load_model(tmp_path)


def make_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_entry_point(tmp_path):
    m = load_model(None, entry_point="tests.foundation.test_models:make_net")
    assert m.module(torch.zeros(1, 1, 8, 8)).shape == (1, 10)
    with pytest.raises(ModelError, match="must look like"):
        load_model(None, entry_point="nocolon")
    with pytest.raises(ModelError, match="cannot import entry point"):
        load_model(None, entry_point="no.such.module:fn")
