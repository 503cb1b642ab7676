"""`bastion serve` for every model form, with real HTTP calls through the ASGI app: a tabular
entry-point MLP on raw breast-cancer features, its ONNX export through onnxruntime, a skops
gradient-boosting model and an XGBoost booster, called with their natural JSON
(``{"inputs": [[30 floats]]}``, or one object per sample by feature name) and validated
against the input spec (shape, per-feature bounds, integer features)."""

from __future__ import annotations

import base64
import sys

import numpy as np
import pytest
import torch

from bastion.cli import main
from bastion.errors import ConfigError
from bastion.models.io import load_model
from bastion.serve.settings import ServeSettings
from tests.guard.test_tabular_guard import FAST, INTEGER_FEATURE, make_tabular_models
from tests.ports import free_port

ENTRY = "bcserve_net:build"


@pytest.fixture(scope="module")
def bc(tmp_path_factory):
    return make_tabular_models(tmp_path_factory.mktemp("bc-serve"), "bcserve_net")


@pytest.fixture()
def in_root(bc, monkeypatch):
    monkeypatch.chdir(bc["root"])
    yield bc["root"]
    sys.modules.pop("bcserve_net", None)


def settings_for(tmp_path, **fields) -> ServeSettings:
    base = {
        "db_url": f"sqlite:///{tmp_path / 'serve.db'}",
        "guard": {"enabled": False},
        "auth": {"cache_ttl_s": 0.0},
        "reviews": {"check_every_s": 3600},
    }
    return ServeSettings.model_validate({**base, **fields})


def rows(bc, n: int = 3) -> list[list[float]]:
    return bc["x"][bc["test"][:n]].astype(float).tolist()


def predict(gw, body):
    return gw.client.post("/v1/predict", json=body, headers=gw.auth())


def torch_probs(bc, x: list[list[float]]) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(bc["model"](torch.tensor(x, dtype=torch.float32)), 1).numpy()


@pytest.fixture()
def mlp_gateway(bc, in_root, tmp_path, gateway_factory):
    settings = settings_for(
        tmp_path, model="bc.pt", entry_point=ENTRY, data={"path": str(bc["csv"])}
    )
    with gateway_factory(settings) as gw:
        yield gw


def test_entry_point_mlp_answers_feature_vectors(bc, mlp_gateway):
    gw = mlp_gateway
    x = rows(bc)
    r = predict(gw, {"inputs": x})
    assert r.status_code == 200, r.text
    probs = np.array(r.json()["probabilities"])
    assert probs.shape == (3, 2) and np.allclose(probs.sum(1), 1.0)
    np.testing.assert_allclose(probs, torch_probs(bc, x), atol=1e-5)
    runtime = gw.state.runtime
    assert runtime.loaded.form == "entry-point" and runtime.spec_source.startswith("--data")
    assert runtime.model_sha256 == load_model("bc.pt", entry_point=ENTRY).sha256
    # the same samples by feature name, and as base64 float32
    named = [{f"f{i}": v for i, v in enumerate(row)} for row in x]
    r2 = predict(gw, {"inputs": named})
    assert r2.status_code == 200 and r2.json()["predictions"] == r.json()["predictions"]
    raw = base64.b64encode(np.asarray(x, dtype="<f4").tobytes()).decode()
    r3 = predict(gw, {"b64": raw, "shape": [3, 30]})
    assert r3.status_code == 200 and r3.json()["predictions"] == r.json()["predictions"]
    entries = gw.client.get("/v1/audit/entries", headers=gw.auth("reviewer")).json()
    decisions = [e["entry"] for e in entries if e["entry"].get("kind") == "decision"]
    assert len(decisions) == 3
    assert {d["model_sha256"] for d in decisions} == {runtime.model_sha256}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r: r.__setitem__(5, 10.0), "sample 0: feature 5 ('f5') is 10, outside its bounds"),
        (lambda r: r.__setitem__(0, -1.0), "feature 0 ('f0') is -1, outside its bounds"),
        (lambda r: r.pop(), "each input must have shape [30] (30 features), got [29]"),
        (lambda r: r.append(1.0), "got [31]"),
        (
            lambda r: r.__setitem__(INTEGER_FEATURE, 600.5),
            f"feature {INTEGER_FEATURE} ('f{INTEGER_FEATURE}') must be a whole number, got 600.5",
        ),
    ],
)
def test_bad_vectors_are_422_naming_the_feature(bc, mlp_gateway, change, message):
    row = rows(bc, 1)[0]
    change(row)
    r = predict(mlp_gateway, {"inputs": [row]})
    assert r.status_code == 422, r.text
    assert message in r.json()["detail"]


def test_bad_named_samples_are_422(bc, mlp_gateway):
    row = {f"f{i}": v for i, v in enumerate(rows(bc, 1)[0])}
    missing = dict(row)
    del missing["f7"]
    r = predict(mlp_gateway, {"inputs": [missing]})
    assert r.status_code == 422 and "missing feature 7 ('f7')" in r.json()["detail"]
    r = predict(mlp_gateway, {"inputs": [{**row, "colour": 1.0}]})
    assert r.status_code == 422 and "unknown feature 'colour'" in r.json()["detail"]
    r = predict(mlp_gateway, {"inputs": [{**row, "f2": True}]})
    assert r.status_code == 422 and "feature 2 ('f2') must be a number" in r.json()["detail"]
    r = predict(mlp_gateway, {"inputs": [{**row, "f2": 1e9}]})
    assert r.status_code == 422 and "feature 2 ('f2') is 1e+09" in r.json()["detail"]


def test_a_flat_sample_gets_a_hint(bc, mlp_gateway):
    r = predict(mlp_gateway, {"inputs": rows(bc, 1)[0]})
    assert r.status_code == 422 and "wrap one sample in a list" in r.json()["detail"]


def test_onnx_model_through_onnxruntime(bc, tmp_path, gateway_factory):
    path = bc["root"] / "bc.onnx"
    settings = settings_for(
        tmp_path, model=str(path), onnx_mode="runtime", data={"path": str(bc["csv"])}
    )
    with gateway_factory(settings) as gw:
        assert gw.state.runtime.loaded.form == "onnx-runtime"
        assert gw.state.runtime.module is None
        x = rows(bc, 4)
        r = predict(gw, {"inputs": x})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(r.json()["probabilities"], torch_probs(bc, x), atol=1e-5)
        assert gw.state.runtime.model_sha256 == load_model(path, onnx_mode="runtime").sha256
        bad = x[0][:]
        bad[INTEGER_FEATURE] += 0.5
        r = predict(gw, {"inputs": [bad]})
        assert r.status_code == 422 and "must be a whole number" in r.json()["detail"]


def test_skops_model_with_a_scores_only_guard(bc, tmp_path, gateway_factory):
    """A gradient-free model behind its guard: the guard reads the model's scores and runs
    input-space detectors; the input spec comes from the guard's meta (no --data)."""
    from bastion.data import load_dataset
    from bastion.guard import GuardConfig, fit_guard
    from bastion.guard.guard import default_guard_dir

    path = bc["root"] / "gb.skops"
    loaded = load_model(path, trusted=bc["trust"])
    bundle = load_dataset(str(bc["csv"]))
    fit_guard(loaded, bundle.train, config=GuardConfig.model_validate(FAST)).save(
        default_guard_dir(loaded)
    )
    settings = settings_for(
        tmp_path, model=str(path), trust=bc["trust"], guard={"enabled": True, "required": True}
    )
    with gateway_factory(settings) as gw:
        runtime = gw.state.runtime
        assert runtime.guard is not None and runtime.spec_source.startswith("the fitted guard")
        assert set(runtime.guard.detectors) == {"reconstruction", "zscore"}
        x = rows(bc, 5)
        r = predict(gw, {"inputs": x})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            r.json()["probabilities"], bc["gb"].predict_proba(np.array(x)), atol=1e-6
        )
        assert r.json()["verdicts"] == ["allow"] * 5
        far = rows(bc, 1)[0]
        far[0] = 1e6
        r = predict(gw, {"inputs": [far]})
        assert r.status_code == 422 and "feature 0 ('f0')" in r.json()["detail"]
        drift = gw.client.get("/v1/guard/drift", headers=gw.auth("reviewer"))
        assert drift.status_code == 200 and drift.json()["window_size"] == 5


def test_xgboost_booster_is_served(bc, tmp_path, gateway_factory):
    xgb = pytest.importorskip("xgboost")
    x, y, tr = bc["x"], bc["y"], bc["train"]
    booster = xgb.XGBClassifier(n_estimators=10, max_depth=2).fit(x[tr], y[tr])
    booster.save_model(tmp_path / "bc.json")
    settings = settings_for(
        tmp_path, model=str(tmp_path / "bc.json"), data={"path": str(bc["csv"])}
    )
    with gateway_factory(settings) as gw:
        assert gw.state.runtime.loaded.form == "xgboost"
        x_req = rows(bc, 3)
        r = predict(gw, {"inputs": x_req})
        assert r.status_code == 200, r.text
        np.testing.assert_allclose(
            r.json()["probabilities"], booster.predict_proba(np.array(x_req)), atol=1e-5
        )


def test_a_model_without_an_input_spec_is_refused(bc, in_root, tmp_path, gateway_factory):
    from fastapi.testclient import TestClient

    from bastion.serve.app import create_app

    app = create_app(settings_for(tmp_path, model="bc.pt", entry_point=ENTRY))
    with (
        pytest.raises(ConfigError, match=r"no input spec .* pass --data TRAIN\.csv"),
        TestClient(app),
    ):
        pass


def test_cli_refuses_to_start_without_bounds(bc, in_root, monkeypatch, capsys, tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    argv = ["serve", "--model", "bc.pt", "--entry-point", ENTRY, "--db", db]
    monkeypatch.setattr(sys, "argv", ["bastion", *argv])
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "pass --data TRAIN.csv" in err and "Traceback" not in err


def test_cli_data_flags_reach_the_input_spec(bc, in_root, monkeypatch):
    """`bastion serve --data bc.csv --integer none` validates with the spec those flags
    give (the server itself is not started)."""
    seen = {}

    def fake_run(server, *args, **kwargs):
        seen["spec"] = server.config.app.state.runtime.input_spec

    monkeypatch.setattr("uvicorn.Server.run", fake_run)
    argv = ["serve", "--model", "bc.pt", "--entry-point", ENTRY, "--data", "bc.csv"]
    argv += ["--port", str(free_port())]
    monkeypatch.setattr(sys, "argv", ["bastion", *argv, "--integer", "none"])
    with pytest.raises(SystemExit) as exc:
        main()
    assert exc.value.code in (0, None)
    assert seen["spec"].integer == [] and len(seen["spec"].lower) == 30
