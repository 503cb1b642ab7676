"""`bastion assess` on models and data Bastion did not make, from the CLI as a user runs it.

Every model here is built in the test from scikit-learn's bundled data: a torch MLP on raw
(unscaled) breast-cancer features loaded by entry point, its ONNX export (both routes), a
scikit-learn gradient-boosting model in skops, an XGBoost booster, a remote HTTP endpoint,
NHWC images, and deliberately broken models for the chance-level guard."""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_iris, load_wine
from torch import nn

from tests.cli_runner import run_main as run_cli
from tests.ports import free_port
from tests.tabular_models import entry_point_mlp, export_onnx, split_like_bastion, train, write_csv

THREAT = """\
eps: [0.1]
attacks: [fgsm, pgd, ensemble]
budgets: {n_eval: 60, pgd_steps: 10, apgd_steps: 10, queries: 100, n_blackbox: 20,
          extraction_queries: [50, 200], shadow_models: 2}
"""


@pytest.fixture(scope="module")
def tabular_mlp(tmp_path_factory):
    """A torch MLP trained on raw breast-cancer features, saved as an entry point + .pt."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bc")
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float32), raw.target
    tr, te = split_like_bastion(len(y))
    model = train(entry_point_mlp(root, "bcnet", x[tr]), x[tr], y[tr])
    torch.save(model.state_dict(), root / "bc.pt")
    csv = write_csv(root / "bc.csv", x, y)
    with torch.no_grad():
        acc = float((model(torch.tensor(x[te])).argmax(1) == torch.tensor(y[te])).float().mean())
    export_onnx(model, torch.tensor(x[tr][:2]), root / "bc.onnx")
    (root / "threat.yaml").write_text(THREAT)
    return {"root": root, "model": model, "csv": csv, "test_accuracy": acc, "test_rows": te}


def accuracy_on_first(mlp: dict, n: int) -> float:
    """The model's own accuracy on the first ``n`` rows of the test split."""
    raw = load_breast_cancer()
    rows = mlp["test_rows"][:n].numpy()
    with torch.no_grad():
        pred = mlp["model"](torch.tensor(raw.data[rows], dtype=torch.float32)).argmax(1)
    return float((pred == torch.tensor(raw.target[rows])).float().mean())


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def test_entry_point_mlp_on_raw_features(tabular_mlp, monkeypatch, capsys, tmp_path):
    root = tabular_mlp["root"]
    monkeypatch.chdir(root)  # the entry point is found from the current directory
    out = tmp_path / "a"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        "bc.pt",
        "--entry-point",
        "bcnet:build",
        "--data",
        "bc.csv",
        "--threat",
        "threat.yaml",
        "--out",
        out,
        "--n-eval",
        114,
    )
    assert code in (0, None), err
    rep = report_of(out)
    assert rep["model"]["form"] == "entry-point"
    roles = {a["role"] for a in rep["model"]["artifacts"]}
    assert {"weights", "source"} <= roles
    assert rep["threat_model"]["eps_mode"] in (None, "relative")
    spec = rep["dataset"]["manifest"]["input_spec"]
    assert spec["modality"] == "tabular" and spec["shape"] == [30]
    ev = [f for f in rep["findings"] if f["probe"] == "evasion" and "eps" in f["params"]]
    assert ev, rep["skipped"]
    # clean accuracy is the model's own on the same rows, no silent rescaling
    assert ev[0]["metrics"]["clean_accuracy"] == pytest.approx(
        tabular_mlp["test_accuracy"], abs=1e-6
    )
    attacks = {f["attack"] for f in ev}
    assert "apgd-ce" in attacks and "ensemble" not in attacks  # 2 classes: no APGD-T
    assert any("APGD-T needs >= 4 classes" in n for f in ev for n in f["notes"])
    assert ev[0]["params"]["eps_mode"] == "relative"
    pgd = next(f for f in ev if f["attack"] == "pgd")
    assert pgd["metrics"]["robust_accuracy"] < pgd["metrics"]["clean_accuracy"]
    skipped = {s["probe"]: s for s in rep["skipped"]}
    assert skipped["membership"]["status"] == "not_measured"
    assert skipped["poisoning"]["status"] == "excluded"
    assert {"blackbox", "extraction"} <= {f["probe"] for f in rep["findings"]}


def test_onnx_export_both_routes(tabular_mlp, monkeypatch, capsys, tmp_path):
    root = tabular_mlp["root"]
    for mode, form, evasion in (("torch", "onnx-torch", True), ("runtime", "onnx-runtime", False)):
        out = tmp_path / mode
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            "assess",
            "--model",
            root / "bc.onnx",
            "--onnx-mode",
            mode,
            "--data",
            root / "bc.csv",
            "--threat",
            root / "threat.yaml",
            "--out",
            out,
            "--n-eval",
            114,
        )
        assert code in (0, None), err
        rep = report_of(out)
        assert rep["model"]["form"] == form
        probes = {f["probe"] for f in rep["findings"]}
        assert ("evasion" in probes) is evasion
        first = rep["findings"][0]
        assert first["metrics"]["clean_accuracy"] == pytest.approx(
            accuracy_on_first(tabular_mlp, first["params"]["n"]), abs=1e-6
        )
        if not evasion:
            reason = next(s for s in rep["skipped"] if s["probe"] == "evasion")["reason"]
            assert "needs gradients" in reason


def test_skops_gradient_boosting_is_assessed_without_gradients(monkeypatch, capsys, tmp_path):
    import skops.io as sio
    from sklearn.ensemble import GradientBoostingClassifier

    raw = load_wine()
    csv = write_csv(tmp_path / "wine.csv", raw.data, raw.target)
    tr, te = split_like_bastion(len(raw.target))
    clf = GradientBoostingClassifier(n_estimators=30, random_state=0)
    clf.fit(raw.data[tr.numpy()], raw.target[tr.numpy()])
    sio.dump(clf, tmp_path / "gb.skops")
    (tmp_path / "threat.yaml").write_text(THREAT)
    untrusted = sio.get_untrusted_types(file=tmp_path / "gb.skops")
    trust = [a for t in untrusted for a in ("--trust", t)]
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        tmp_path / "gb.skops",
        *trust,
        "--data",
        csv,
        "--threat",
        tmp_path / "threat.yaml",
        "--out",
        out,
    )
    assert code in (0, None), err
    rep = report_of(out)
    assert rep["model"]["form"] == "skops" and rep["model"]["capabilities"]["gradients"] is False
    own = float((clf.predict(raw.data[te.numpy()]) == raw.target[te.numpy()]).mean())
    bb = [f for f in rep["findings"] if f["probe"] == "blackbox"]
    assert {f["attack"] for f in bb} == {"square", "hopskipjump"}
    n = bb[0]["params"]["n"]
    assert bb[0]["metrics"]["clean_accuracy"] == pytest.approx(
        float((clf.predict(raw.data[te.numpy()][:n]) == raw.target[te.numpy()][:n]).mean())
    )
    assert own > 0.8
    assert "needs gradients" in next(s["reason"] for s in rep["skipped"] if s["probe"] == "evasion")


def test_xgboost_json_model(monkeypatch, capsys, tmp_path):
    xgb = pytest.importorskip("xgboost")
    raw = load_iris()
    csv = write_csv(tmp_path / "iris.csv", raw.data, raw.target)
    tr, _ = split_like_bastion(len(raw.target))
    booster = xgb.XGBClassifier(n_estimators=20, max_depth=3).fit(
        raw.data[tr.numpy()], raw.target[tr.numpy()]
    )
    booster.save_model(tmp_path / "iris.json")
    (tmp_path / "threat.yaml").write_text(THREAT)
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        tmp_path / "iris.json",
        "--data",
        csv,
        "--threat",
        tmp_path / "threat.yaml",
        "--out",
        out,
    )
    assert code in (0, None), err
    rep = report_of(out)
    assert rep["model"]["form"] == "xgboost"
    assert rep["findings"][0]["metrics"]["clean_accuracy"] > 0.85  # iris values never rescaled


def test_nhwc_images_through_an_entry_point(monkeypatch, capsys, tmp_path):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n = 240
    y = rng.integers(0, 4, n)
    x = rng.random((n, 32, 32, 3)).astype(np.float32) * 0.5
    for k in range(4):  # class k brightens channel k % 3 in quadrant k
        r, c = divmod(k, 2)
        x[y == k, r * 16 : r * 16 + 16, c * 16 : c * 16 + 16, k % 3] += 0.5
    np.savez(tmp_path / "img.npz", x=x, y=y)
    (tmp_path / "imgnet.py").write_text(
        "from torch import nn\n\n\ndef build():\n    return nn.Sequential(nn.Conv2d(3, 8, 3, 2), "
        "nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 4))\n"
    )
    monkeypatch.chdir(tmp_path)
    sys.path.insert(0, str(tmp_path))
    try:
        import imgnet

        model = imgnet.build()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("imgnet", None)
    xt = torch.tensor(x).permute(0, 3, 1, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt), torch.tensor(y)).backward()
        opt.step()
    torch.save(model.state_dict(), tmp_path / "img.pt")
    (tmp_path / "threat.yaml").write_text(THREAT)
    out = tmp_path / "out"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        "img.pt",
        "--entry-point",
        "imgnet:build",
        "--data",
        "img.npz",
        "--threat",
        "threat.yaml",
        "--eps",
        0.03,
        "--out",
        out,
    )
    assert code in (0, None), err
    rep = report_of(out)
    spec = rep["dataset"]["manifest"]["input_spec"]
    assert spec["modality"] == "image" and spec["shape"] == [3, 32, 32]
    assert spec["source_layout"] == "NHWC"
    assert rep["findings"][0]["params"]["eps_mode"] == "absolute"


class Constant(nn.Module):
    def forward(self, x):
        out = torch.zeros(x.shape[0], 2)
        out[:, 0] = 1.0
        return out + 0 * x.flatten(1).sum(1, keepdim=True)


def test_a_model_at_chance_is_refused_not_scored(tmp_path):
    import bastion
    from bastion.errors import AssessmentError

    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float32), raw.target
    with pytest.raises(AssessmentError, match="majority-class rate"):
        bastion.assess(Constant(), (x, y), threat={"eps": [0.1]}, out_dir=tmp_path, record=False)


def test_rescaled_data_collapses_accuracy_and_is_refused(
    tabular_mlp, monkeypatch, capsys, tmp_path
):
    """The old iris bug from the other side: data divided by 255 makes a good model guess."""
    root = tabular_mlp["root"]
    monkeypatch.chdir(root)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        "bc.pt",
        "--entry-point",
        "bcnet:build",
        "--data",
        "bc.csv",
        "--scale",
        255,
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "robustness figures would be meaningless" in err
    assert "Traceback" not in err


def test_mismatched_model_and_data_is_one_clear_error(tabular_mlp, monkeypatch, capsys, tmp_path):
    raw = load_iris()
    csv = write_csv(tmp_path / "iris.csv", raw.data, raw.target)
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        tabular_mlp["root"] / "bc.onnx",
        "--data",
        csv,
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "takes inputs of shape (30,)" in err


def test_python_api_with_an_nn_module(tabular_mlp, tmp_path):
    import bastion

    raw = load_breast_cancer()
    out = bastion.assess(
        tabular_mlp["model"],
        (raw.data.astype(np.float32), raw.target),
        threat={
            "eps": [0.05],
            "probes": ["evasion"],
            "attacks": ["pgd"],
            "budgets": {"n_eval": 50, "pgd_steps": 5},
        },
        out_dir=tmp_path,
        record=False,
        members="train-split",
    )
    assert out.report.model.form == "module"
    assert {f.attack for f in out.report.findings} >= {"pgd"}


def test_http_endpoint_with_a_plain_json_list(tabular_mlp, monkeypatch, capsys, tmp_path):
    import uvicorn
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    model = tabular_mlp["model"]

    async def predict(request):
        if request.headers.get("authorization") != "Bearer s3cret":
            return JSONResponse({"detail": "bad key"}, status_code=401)
        rows = torch.tensor(await request.json(), dtype=torch.float32)
        with torch.no_grad():
            return JSONResponse(torch.softmax(model(rows), 1).tolist())

    api = Starlette(routes=[Route("/predict", predict, methods=["POST"])])
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(api, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(100):
        if server.started:
            break
        time.sleep(0.05)
    try:
        monkeypatch.setenv("BC_KEY", "s3cret")
        threat = tmp_path / "threat.yaml"
        threat.write_text(THREAT + "skip: [extraction]\n")
        out = tmp_path / "out"
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            "assess",
            "--model",
            f"http://127.0.0.1:{port}/predict",
            "--target-body",
            "list",
            "--api-key-env",
            "BC_KEY",
            "--data",
            tabular_mlp["csv"],
            "--threat",
            threat,
            "--out",
            out,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=5)
    assert code in (0, None), err
    rep = report_of(out)
    assert rep["model"]["form"] == "http"
    bb = [f for f in rep["findings"] if f["probe"] == "blackbox"]
    assert bb and bb[0]["metrics"]["queries"] > 0


def test_profile_data_options_are_used(tabular_mlp, monkeypatch, capsys, tmp_path):
    """A profile's data_options (here: the label column, last and named) read the CSV."""
    raw = load_breast_cancer()
    rows = [
        ",".join([*(f"{v:.6g}" for v in r), str(int(t))])
        for r, t in zip(raw.data, raw.target, strict=True)
    ]
    csv = tmp_path / "bc_last.csv"
    csv.write_text(",".join([*(f"f{i}" for i in range(30)), "outcome"]) + "\n" + "\n".join(rows))
    root = tabular_mlp["root"]
    profile = tmp_path / "profile.yaml"
    profile.write_text(
        f"model: {root / 'bc.pt'}\nentry_point: bcnet:build\ndata: {csv}\n"
        f"data_options: {{label_column: outcome}}\nthreat_model: {root / 'threat.yaml'}\n"
        f"out: {tmp_path / 'out'}\n"
    )
    monkeypatch.chdir(root)
    code, _, err = run_cli(monkeypatch, capsys, "assess", "--profile", profile, "--n-eval", 114)
    assert code in (0, None), err
    rep = report_of(tmp_path / "out")
    assert rep["dataset"]["manifest"]["input_spec"]["feature_names"][-1] == "f29"
    ev = next(f for f in rep["findings"] if f["probe"] == "evasion")
    assert ev["metrics"]["clean_accuracy"] == pytest.approx(tabular_mlp["test_accuracy"], abs=1e-6)
