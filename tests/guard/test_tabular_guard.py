"""The guard on tabular models of every form: detectors in range-normalised feature space or
on the MLP's hidden layers, tabular shifts (never an image transform), the relative-ε
attack space, input-space detectors only for gradient-free models, and the CLI end to end.

Every model is built here from scikit-learn's breast-cancer data, with "mean area" (feature
3) rounded to whole numbers so that the data has an integer feature: a torch MLP on the raw
features loaded by entry point, its ONNX export, and a skops gradient-boosting model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from bastion.cli import main
from bastion.errors import ConfigError
from bastion.guard import Guard, GuardConfig, GuardNotFittedError, fit_guard
from bastion.guard.evaluate import default_shifts, evaluate_guard, shifted_inputs
from bastion.guard.tap import ModelTap, ScoresTap
from tests.tabular_models import entry_point_mlp, export_onnx, train, write_csv

INTEGER_FEATURE = 3  # "mean area", rounded to whole numbers in the CSV
FAST = {
    "detectors": {"reconstruction": {"epochs": 40}},
    "extraction": {"delta": 0.9},
    "drift": {"reference_size": 200},
}


def make_tabular_models(root: Path, module_name: str, *, skops: bool = True) -> dict:
    """The breast-cancer CSV, an entry-point MLP (``module_name:build`` + ``bc.pt``), its
    ONNX export (``bc.onnx``) and a skops gradient-boosting model (``gb.skops``), trained
    on the 80 % split that ``load_dataset`` makes of the CSV (seed 0)."""
    torch.manual_seed(0)
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float32), raw.target
    x[:, INTEGER_FEATURE] = np.round(x[:, INTEGER_FEATURE])
    csv = write_csv(root / "bc.csv", x, y)
    x = np.array([[float(f"{v:.6g}") for v in r] for r in x], dtype=np.float32)  # as read back
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, te = perm[: int(0.8 * len(y))].numpy(), perm[int(0.8 * len(y)) :].numpy()
    model = train(entry_point_mlp(root, module_name, x[tr]), x[tr], y[tr])
    torch.save(model.state_dict(), root / "bc.pt")
    export_onnx(model, torch.tensor(x[tr][:2]), root / "bc.onnx")
    out = {"root": root, "csv": csv, "model": model, "x": x, "y": y, "train": tr, "test": te}
    if skops:
        import skops.io as sio
        from sklearn.ensemble import GradientBoostingClassifier

        gb = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0)
        gb.fit(x[tr], y[tr])
        sio.dump(gb, root / "gb.skops")
        out["gb"] = gb
        out["trust"] = sio.get_untrusted_types(file=root / "gb.skops")
    return out


@pytest.fixture(scope="module")
def bc(tmp_path_factory):
    return make_tabular_models(tmp_path_factory.mktemp("bc-guard"), "bcguard_net")


@pytest.fixture(scope="module")
def bundle(bc):
    from bastion.data import load_dataset

    return load_dataset(str(bc["csv"]))


@pytest.fixture()
def in_root(bc, monkeypatch):
    monkeypatch.chdir(bc["root"])  # the entry point is found from the current directory
    yield bc["root"]
    sys.modules.pop("bcguard_net", None)


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["bastion", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_the_csv_has_an_integer_feature(bundle):
    spec = bundle.train.input_spec
    assert spec.modality == "tabular" and spec.shape == [30]
    assert spec.integer == [INTEGER_FEATURE] and len(spec.lower) == 30


def test_cli_fit_and_evaluate_an_entry_point_mlp(bc, in_root, monkeypatch, capsys, tmp_path):
    cfg = tmp_path / "guard.yaml"
    cfg.write_text(json.dumps(FAST))
    model = ["--model", "bc.pt", "--entry-point", "bcguard_net:build", "--data", "bc.csv"]
    code, out, err = run_cli(monkeypatch, capsys, "guard", "fit", *model, "--config", cfg)
    assert code in (0, None), err
    assert "squeeze: not applicable" in " ".join(out.split())
    guard_dir = in_root / "bc.pt.guard"
    doc = json.loads((guard_dir / "guard.json").read_text())
    meta = doc["meta"]
    assert meta["modality"] == "tabular" and meta["tap"] == "model"
    assert meta["input_spec"]["integer"] == [INTEGER_FEATURE]
    assert len(meta["input_spec"]["lower"]) == 30 and meta["input_spec"]["feature_names"][0] == "f0"
    assert set(doc["detectors"]) == {"mahalanobis", "reconstruction", "zscore"}
    assert "image" in meta["detectors_not_built"]["squeeze"]
    params = doc["detectors"]["reconstruction"]["params"]
    assert len(params["lower"]) == 30 and "bounds" not in params
    ev_path = tmp_path / "ev.json"
    code, _, err = run_cli(
        monkeypatch, capsys, "guard", "evaluate", *model, "--out", ev_path, "--steps", 10
    )
    assert code in (0, None), err
    ev = json.loads(ev_path.read_text())
    assert ev["modality"] == "tabular"
    na, ad = ev["non_adaptive"], ev["adaptive"]
    assert na["attack"]["name"] == "pgd" and na["attack"]["eps_mode"] == "relative"
    assert na["attack"]["eps"] == 0.1 and na["attack"]["n_successful"] > 0
    # the adaptive attacker runs in the same relative-ε space, integer feature kept whole
    assert ad["status"] == "measured" and ad["attack"]["eps_mode"] == "relative"
    assert ad["guarded_robust_accuracy"] <= na["guarded_robust_accuracy"]
    assert ev["calibration"]["source"] == "test-split"  # training rows unknown: test half
    shifts = set(ev["shifts"])
    assert {"noise", "scale", "missing-lower", "missing-mean"} <= shifts
    assert "uniform" in shifts  # no other bundled table has 30 features but breast cancer
    assert not shifts & {"blur", "resize"}
    assert not any("resized" in s["description"] for s in ev["shifts"].values())
    assert ev["shifts"]["uniform"]["detectors"]["guard"]["auroc"] > 0.95
    for name in ("mahalanobis", "reconstruction", "zscore", "guard"):
        assert 0 <= na["detectors"][name]["fpr"] <= 0.1
    assert na["detectors"]["mahalanobis"]["auroc"] > 0.7  # PGD at relative ε 0.1
    assert ev["model_sha256"] == meta["model_sha256"]


def test_image_transforms_are_refused_on_vectors(bundle):
    x = bundle.test.x[:10]
    with pytest.raises(ConfigError, match="image transform"):
        shifted_inputs("blur", x, spec=bundle.test.input_spec, generator=torch.Generator())
    assert "blur" not in default_shifts("tabular") and "blur" in default_shifts("image")


def test_tabular_shifts_stay_in_the_box_with_whole_integer_features(bundle):
    spec = bundle.test.input_spec
    x = bundle.test.x
    lo, hi = spec.lower_tensor(), spec.upper_tensor()
    gen = torch.Generator().manual_seed(0)
    for kind in ("noise", "scale", "missing-lower", "missing-mean", "uniform"):
        xs, desc = shifted_inputs(kind, x, spec=spec, generator=gen)
        assert xs.shape == x.shape and desc, kind
        assert bool(((xs >= lo) & (xs <= hi)).all()), kind
        col = xs[:, INTEGER_FEATURE]
        assert torch.equal(col, col.round()), kind
        assert not torch.equal(xs, x), kind
    noisy, _ = shifted_inputs("noise", x, spec=spec, generator=gen)
    moved = (noisy - x).abs().mean(0) / (hi - lo)
    assert bool((moved < 0.2).all()) and bool((moved > 0.01).all())  # σ scaled per feature
    low, _ = shifted_inputs("missing-lower", x, spec=spec, generator=gen)
    share = float((low == lo).float().mean())
    assert 0.15 < share < 0.4


def test_reconstruction_is_unit_invariant_with_per_feature_bounds(bundle):
    """Per-feature bounds: a feature given in other units (×1000, bounds too) does not
    change the scores; with one scalar range it would dominate them."""
    from bastion.guard.detectors import ReconstructionDetector

    spec = bundle.train.input_spec
    x, xt = bundle.train.x, bundle.test.x[:40]
    k = torch.ones(30)
    k[0] = 1000.0
    lower, upper = list(spec.lower), list(spec.upper)
    scaled_lower = [v * float(f) for v, f in zip(lower, k, strict=True)]
    scaled_upper = [v * float(f) for v, f in zip(upper, k, strict=True)]
    a = ReconstructionDetector(epochs=20, seed=3, lower=lower, upper=upper).fit(x)
    b = ReconstructionDetector(epochs=20, seed=3, lower=scaled_lower, upper=scaled_upper).fit(x * k)
    torch.testing.assert_close(a.score(xt), b.score(xt * k), rtol=2e-3, atol=1e-3)


def test_skops_model_gets_input_space_detectors_only(bc, bundle, tmp_path):
    from bastion.models.io import load_model

    loaded = load_model(bc["root"] / "gb.skops", trusted=bc["trust"])
    guard = fit_guard(loaded, bundle.train, config=GuardConfig.model_validate(FAST))
    assert isinstance(guard.tap, ScoresTap)
    assert set(guard.detectors) == {"reconstruction", "zscore"}
    assert "hidden layers" in guard.not_built["mahalanobis"]
    assert "skops" in guard.not_built["mahalanobis"]
    assert guard.meta["drift_features"].startswith("input")
    x = bundle.test.x[:30]
    logits, verdicts = guard.predict_and_inspect(x, "c")
    np.testing.assert_allclose(
        logits.softmax(1).numpy(), bc["gb"].predict_proba(x.numpy()), rtol=1e-5, atol=1e-6
    )
    assert len(verdicts) == 30
    guard.save(tmp_path)
    back = Guard.load(tmp_path, loaded)
    for name, s in guard.scores(x).items():
        assert torch.equal(s, back.scores(x)[name]), name
    assert back.input_spec == bundle.train.input_spec
    other = load_model(bc["root"] / "bc.onnx", onnx_mode="runtime")
    with pytest.raises(GuardNotFittedError, match="other model weights"):
        Guard.load(tmp_path, other)
    ev = evaluate_guard(back, loaded, bundle.test, n=40, queries=60, drift_windows=3)
    assert ev.attack["name"] == "square" and ev.attack["eps_mode"] == "relative"
    assert ev.adaptive.status == "not_measured" and "no gradients" in ev.adaptive.reason
    assert "mahalanobis" in ev.detectors_not_built and "blur" not in ev.shifts


def test_onnx_converted_mlp_is_read_through_its_hidden_layers(bc, bundle):
    from bastion.models.io import load_model

    loaded = load_model(bc["root"] / "bc.onnx", onnx_mode="torch")
    guard = fit_guard(loaded, bundle.train.head(200), config=GuardConfig.model_validate(FAST))
    assert isinstance(guard.tap, ModelTap) and "mahalanobis" in guard.detectors
    assert guard.meta["model_sha256"] == loaded.sha256
    assert len(guard.inspect(bundle.test.x[:5], "c")) == 5
