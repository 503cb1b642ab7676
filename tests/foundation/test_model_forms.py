"""Every `--model PATH` form, with real models trained here on scikit-learn's bundled data:
an entry point (imported from the working directory) with state-dict weights, TorchScript,
ONNX (onnx2torch and onnxruntime), skops, XGBoost and LightGBM; and the refusals."""

from __future__ import annotations

import importlib.util
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from torch import nn

from bastion.errors import ModelError, UnsafeModelError
from bastion.models.io import load_model, state_sha256
from bastion.models.loaded import artifacts_sha256, file_sha256

NET_SRC = '''
import torch
from torch import nn


class Net(nn.Module):
    """Standardise raw breast-cancer features, then a small MLP (2 classes)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.zeros(30))
        self.register_buffer("std", torch.ones(30))
        self.body = nn.Sequential(nn.Linear(30, 16), nn.ReLU(), nn.Linear(16, 2))

    def forward(self, x):
        return self.body((x - self.mean) / self.std)


def build():
    return Net()
'''
TRAIN_MODULE = "_bastion_forms_train_net"  # the training copy; tests import `bc_net` from cwd


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    return load_breast_cancer(return_X_y=True)


@pytest.fixture(scope="module")
def wine() -> tuple[np.ndarray, np.ndarray]:
    return load_wine(return_X_y=True)


@pytest.fixture(scope="module")
def mlp(cancer, tmp_path_factory) -> nn.Module:
    """The MLP trained on raw breast-cancer features (about 0.3 s)."""
    src = tmp_path_factory.mktemp("train") / f"{TRAIN_MODULE}.py"
    src.write_text(NET_SRC)
    spec = importlib.util.spec_from_file_location(TRAIN_MODULE, src)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[TRAIN_MODULE] = mod  # torch.jit.script reads the class's source through it
    spec.loader.exec_module(mod)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # module-scoped: set up before the per-test one-thread fixture
    torch.manual_seed(0)
    x, y = torch.tensor(cancer[0], dtype=torch.float32), torch.tensor(cancer[1])
    net = mod.build()
    net.mean.copy_(x.mean(0))
    net.std.copy_(x.std(0))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    torch.set_num_threads(threads)
    net.eval()
    yield net
    sys.modules.pop(TRAIN_MODULE, None)


def _xt(x: np.ndarray) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def _check_artifacts(loaded, expected: dict[str, Path]) -> None:
    """Artifacts name exactly ``expected`` (role -> file) with the files' hashes."""
    got = {a.role: (Path(a.path), a.sha256) for a in loaded.artifacts}
    assert got == {role: (p, file_sha256(p)) for role, p in expected.items()}
    assert loaded.sha256 == artifacts_sha256(loaded.artifacts)


# --- torch forms ---------------------------------------------------------------------------


@pytest.fixture()
def user_dir(tmp_path, monkeypatch, mlp):
    """A working directory holding the user's `bc_net.py` and the trained weights."""
    (tmp_path / "bc_net.py").write_text(NET_SRC)
    state = {k: v.detach().clone().contiguous() for k, v in mlp.state_dict().items()}
    torch.save(state, tmp_path / "bc.pt")
    save_file(state, str(tmp_path / "bc.safetensors"))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    sys.modules.pop("bc_net", None)


def test_entry_point_imports_from_cwd_with_weights_file(user_dir, mlp, cancer):
    assert str(user_dir) not in sys.path and "bc_net" not in sys.modules
    path_before = list(sys.path)
    loaded = load_model(user_dir / "bc.pt", entry_point="bc_net:build")
    assert sys.path == path_before  # the working directory was on the path for the import only
    assert loaded.form == "entry-point" and loaded.entry_point == "bc_net:build"
    caps = loaded.capabilities
    assert caps.gradients and caps.retrainable and loaded.differentiable
    _check_artifacts(loaded, {"weights": user_dir / "bc.pt", "source": user_dir / "bc_net.py"})
    assert loaded.provenance["state_sha256"] == state_sha256(loaded.module)
    x = _xt(cancer[0])
    expected = mlp(x).argmax(1)
    assert torch.equal(loaded.predict(x), expected)
    assert (expected.numpy() == cancer[1]).mean() > 0.95
    fresh = loaded.rebuild()
    assert isinstance(fresh, nn.Module) and not torch.equal(fresh.mean, loaded.module.mean)

    again = load_model(None, entry_point="bc_net:build", weights=user_dir / "bc.safetensors")
    _check_artifacts(
        again, {"weights": user_dir / "bc.safetensors", "source": user_dir / "bc_net.py"}
    )
    assert torch.equal(again.predict(x), expected)


def test_entry_point_refuses_a_non_weights_file(user_dir):
    (user_dir / "notes.txt").write_text("hello")
    with pytest.raises(ModelError, match="must be a weights file"):
        load_model(user_dir / "notes.txt", entry_point="bc_net:build")


@pytest.mark.parametrize("suffix", [".pt", ".ts"])
def test_torchscript(mlp, cancer, tmp_path, suffix):
    path = tmp_path / f"bc{suffix}"
    torch.jit.save(torch.jit.script(mlp), str(path))
    loaded = load_model(path)
    assert loaded.form == "torchscript"
    assert loaded.capabilities.gradients and not loaded.capabilities.retrainable
    _check_artifacts(loaded, {"torchscript": path})
    x = _xt(cancer[0])
    assert torch.equal(loaded.predict(x), mlp(x).argmax(1))
    xg = x[:4].clone().requires_grad_(True)
    loaded.require_module("a gradient attack")(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0


def _export_onnx(module: nn.Module, path: Path, dynamic_features: bool = False) -> Path:
    axes = {0: "batch", 1: "features"} if dynamic_features else {0: "batch"}
    torch.onnx.export(
        module,
        (torch.zeros(2, 30),),
        str(path),
        input_names=["x"],
        output_names=["y"],
        dynamic_axes={"x": axes, "y": {0: "batch"}},
        dynamo=False,
    )
    return path


def test_onnx_both_routes(mlp, cancer, tmp_path):
    path = _export_onnx(mlp, tmp_path / "bc.onnx")
    had_torchvision = "torchvision" in sys.modules
    x = _xt(cancer[0])
    expected = mlp(x).argmax(1)
    with torch.no_grad():
        probs = torch.softmax(mlp(x), 1)

    white = load_model(path)
    assert ("torchvision" in sys.modules) == had_torchvision  # the import stub is gone
    assert white.form == "onnx-torch" and white.differentiable
    assert any("converted by onnx2torch: white-box" in n for n in white.notes)
    caps = white.capabilities
    assert caps.num_classes == 2 and caps.input_shape == [30] and not caps.retrainable
    _check_artifacts(white, {"onnx": path})
    assert torch.equal(white.predict(x), expected)
    assert torch.allclose(white.scores(x), probs, atol=1e-5)
    xg = x[:4].clone().requires_grad_(True)
    white.module(xg).sum().backward()
    assert xg.grad.abs().sum() > 0
    assert load_model(path, onnx_mode="torch").form == "onnx-torch"

    black = load_model(path, onnx_mode="runtime")
    assert black.form == "onnx-runtime" and black.module is None
    caps = black.capabilities
    assert not caps.gradients and caps.num_classes == 2 and caps.input_shape == [30]
    assert black.sha256 == white.sha256
    assert torch.equal(black.predict(x), expected)
    assert torch.allclose(black.scores(x), probs, atol=1e-5)
    with pytest.raises(ModelError, match="needs a differentiable torch model"):
        black.require_module("pgd")


def test_onnx_softmax_graph_gives_log_probabilities(mlp, cancer, tmp_path):
    path = _export_onnx(nn.Sequential(mlp, nn.Softmax(dim=1)), tmp_path / "p.onnx")
    x = _xt(cancer[0][:64])
    loaded = load_model(path)
    assert loaded.form == "onnx-torch" and any("logarithm" in n for n in loaded.notes)
    with torch.no_grad():
        assert torch.allclose(loaded.scores(x), torch.softmax(mlp(x), 1), atol=1e-5)
    black = load_model(path, onnx_mode="runtime")
    assert torch.allclose(black.scores(x), torch.softmax(mlp(x), 1).detach(), atol=1e-5)


def test_onnx_falls_back_to_runtime_and_torch_mode_refuses(mlp, cancer, tmp_path, monkeypatch):
    path = _export_onnx(mlp, tmp_path / "sym.onnx", dynamic_features=True)
    loaded = load_model(path)
    assert loaded.form == "onnx-runtime"
    assert any("symbolic dimensions" in n for n in loaded.notes)
    x = _xt(cancer[0])
    assert torch.equal(loaded.predict(x), mlp(x).argmax(1))
    with pytest.raises(ModelError, match=r"cannot use it as a torch module.*symbolic"):
        load_model(path, onnx_mode="torch")
    with pytest.raises(ModelError, match="unknown onnx_mode"):
        load_model(path, onnx_mode="fast")
    plain = _export_onnx(mlp, tmp_path / "plain.onnx")
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # as if it were not installed
    fallback = load_model(plain)
    assert fallback.form == "onnx-runtime"
    assert any("onnx2torch" in n and "--no-deps" in n for n in fallback.notes)


def test_torchvision_stub_raises_a_model_error(mlp, tmp_path):
    load_model(_export_onnx(mlp, tmp_path / "bc.onnx"))  # imports onnx2torch
    if importlib.util.find_spec("torchvision") is not None:
        pytest.skip("torchvision is installed: no stub")
    from onnx2torch.node_converters import nms

    with pytest.raises(ModelError, match="NonMaxSuppression/RoiAlign, which needs torchvision"):
        nms.torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)


# --- scikit-learn, XGBoost, LightGBM -------------------------------------------------------

TREE_TYPE = "sklearn.tree._tree.Tree"


def test_skops_estimator(wine, tmp_path):
    import skops.io as sio
    from sklearn.base import clone
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = wine
    clf = GradientBoostingClassifier(n_estimators=15, max_depth=2, random_state=0).fit(x, y)
    path = tmp_path / "gb.skops"
    sio.dump(clf, path)
    T = re.escape(TREE_TYPE)
    with pytest.raises(UnsafeModelError, match=rf"refused.*{T}.*--trust {T}"):
        load_model(path)
    loaded = load_model(path, trusted=[TREE_TYPE])
    assert loaded.form == "skops" and loaded.predict_fn is not None
    caps = loaded.capabilities
    assert not caps.gradients and caps.output == "scores" and caps.retrainable
    assert caps.num_classes == 3 and caps.input_shape == [13]
    _check_artifacts(loaded, {"skops": path})
    xt = torch.from_numpy(x)
    assert np.array_equal(loaded.predict(xt).numpy(), clf.predict(x))
    scores = loaded.scores(xt)
    assert scores.dtype == torch.float32
    assert np.allclose(scores.numpy(), clf.predict_proba(x), atol=1e-6)
    refit = clone(loaded.estimator).fit(x[::2], y[::2])
    assert refit.predict(x).shape == (len(x),)


def test_skops_labels_only_estimator(wine, tmp_path):
    import skops.io as sio
    from sklearn.linear_model import RidgeClassifier

    x, y = wine
    names = np.array(["barolo", "grignolino", "barbera"])[y]
    clf = RidgeClassifier().fit(x, names)
    path = tmp_path / "ridge.skops"
    sio.dump(clf, path)
    loaded = load_model(path, trusted=sio.get_untrusted_types(file=path))
    assert loaded.capabilities.output == "labels" and loaded.capabilities.num_classes == 3
    got = loaded.predict(torch.from_numpy(x).float()[:, None, :])  # flattened to (N, D)
    assert np.array_equal(clf.classes_[got.numpy()], clf.predict(x.astype(np.float32)))


def test_xgboost_multiclass_json_and_binary_ubj(cancer, tmp_path):
    import xgboost as xgb

    xi, yi = load_iris(return_X_y=True)
    multi = xgb.XGBClassifier(n_estimators=10, max_depth=2, n_jobs=1, random_state=0)
    multi.fit(xi, yi)
    jpath = tmp_path / "iris.json"
    multi.save_model(jpath)
    loaded = load_model(jpath)
    assert loaded.form == "xgboost" and not loaded.capabilities.gradients
    caps = loaded.capabilities
    assert caps.num_classes == 3 and caps.input_shape == [4] and not caps.retrainable
    _check_artifacts(loaded, {"xgboost": jpath})
    assert np.array_equal(loaded.predict(torch.from_numpy(xi)).numpy(), multi.predict(xi))
    assert np.allclose(loaded.scores(torch.from_numpy(xi)).numpy(), multi.predict_proba(xi))

    xb, yb = cancer
    binary = xgb.XGBClassifier(n_estimators=10, max_depth=2, n_jobs=1, random_state=0)
    binary.fit(xb, yb)
    upath = tmp_path / "cancer.ubj"
    binary.save_model(upath)
    loaded = load_model(upath)
    assert loaded.capabilities.num_classes == 2 and loaded.capabilities.input_shape == [30]
    _check_artifacts(loaded, {"xgboost": upath})
    scores = loaded.scores(torch.from_numpy(xb))
    assert scores.shape == (len(xb), 2)
    assert np.allclose(scores.numpy(), binary.predict_proba(xb), atol=1e-6)
    assert np.array_equal(loaded.predict(torch.from_numpy(xb)).numpy(), binary.predict(xb))

    reg = xgb.XGBRegressor(n_estimators=2, n_jobs=1).fit(xi, yi)
    reg.save_model(tmp_path / "reg.json")
    with pytest.raises(ModelError, match="is not a classifier"):
        load_model(tmp_path / "reg.json")


@pytest.mark.parametrize("suffix", [".txt", ".lgb"])
def test_lightgbm(wine, cancer, tmp_path, suffix):
    import lightgbm as lgb

    params = {"n_estimators": 10, "num_leaves": 4, "n_jobs": 1, "random_state": 0, "verbose": -1}
    for (x, y), k in ((wine, 3), (cancer, 2)):
        clf = lgb.LGBMClassifier(**params).fit(x, y)
        path = tmp_path / f"m{k}{suffix}"
        clf.booster_.save_model(str(path))
        loaded = load_model(path)
        assert loaded.form == "lightgbm" and not loaded.capabilities.gradients
        assert loaded.capabilities.num_classes == k
        assert loaded.capabilities.input_shape == [x.shape[1]]
        _check_artifacts(loaded, {"lightgbm": path})
        xt = torch.from_numpy(x)
        assert np.array_equal(loaded.predict(xt).numpy(), clf.predict(x))
        assert np.allclose(loaded.scores(xt).numpy(), clf.predict_proba(x), atol=1e-6)


# --- refusals ------------------------------------------------------------------------------


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_refusals(tmp_path, mlp, monkeypatch):
    with pytest.raises(ModelError, match=r"model not found.*ONNX"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "model.h5").write_bytes(b"\x89HDF")
    with pytest.raises(ModelError, match=r"unrecognised model file \(\.h5\).*skops"):
        load_model(tmp_path / "model.h5")
    (tmp_path / "other.json").write_text('{"name": "not a booster"}')
    with pytest.raises(ModelError, match="unrecognised model file"):
        load_model(tmp_path / "other.json")
    torch.save(mlp.state_dict(), tmp_path / "state.pt")
    with pytest.raises(ModelError, match=r"state dict.*--entry-point module:function"):
        load_model(tmp_path / "state.pt")
    save_file({k: v.contiguous() for k, v in mlp.state_dict().items()}, tmp_path / "w.safetensors")
    with pytest.raises(ModelError, match=r"weights only.*--entry-point"):
        load_model(tmp_path / "w.safetensors")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump({"w": Evil()}, f)
    with pytest.raises(UnsafeModelError, match=r"refused.*allowlist"):
        load_model(tmp_path / "evil.pt")
    torch.save(nn.Linear(2, 2), tmp_path / "module.pth")
    with pytest.raises(UnsafeModelError, match=r"refused.*allowlist"):
        load_model(tmp_path / "module.pth")
    (tmp_path / "fake.ts").write_bytes(b"not a zip")
    with pytest.raises(ModelError, match="not a TorchScript archive"):
        load_model(tmp_path / "fake.ts")
    for name, message in [
        ("m.onnx", "onnxruntime cannot load it"),
        ("m.ubj", "XGBoost cannot read it"),
        ("m.skops", "not a valid skops file"),
    ]:
        (tmp_path / name).write_bytes(b"junk")
        with pytest.raises(ModelError, match=message):
            load_model(tmp_path / name)
    monkeypatch.setitem(sys.modules, "skops", None)  # as if the extra were not installed
    monkeypatch.setitem(sys.modules, "skops.io", None)
    with pytest.raises(ModelError, match=r"pip install 'bastion-ml\[models\]'"):
        load_model(tmp_path / "m.skops")
