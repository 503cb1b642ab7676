"""`bastion harden` on models Bastion did not make: an entry-point MLP on raw breast-cancer
features, its TorchScript and ONNX forms, a scikit-learn gradient-boosting model in skops and
an XGBoost booster; not-applicable recipes and the clean-accuracy collapse guard.

Every model is built here from scikit-learn's bundled data; nothing is mocked."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_wine

from bastion.data import load_dataset
from bastion.models.io import load_model
from bastion.models.loaded import file_sha256
from tests.cli_runner import run_main as run_cli
from tests.tabular_models import entry_point_mlp, export_onnx, split_like_bastion, train, write_csv

THREAT = """\
eps: [0.1]
probes: [evasion]
attacks: [pgd]
curve_eps: [0.05, 0.1]
budgets: {n_eval: 60, pgd_steps: 5}
"""

BLACKBOX_THREAT = """\
eps: [0.1]
probes: [blackbox]
budgets: {n_blackbox: 8, queries: 30}
"""


@pytest.fixture(scope="module")
def bc(tmp_path_factory):
    """A torch MLP on raw breast-cancer features: entry point + .pt, TorchScript, ONNX, CSV."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("bc-harden")
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float32), raw.target
    csv = write_csv(root / "bc.csv", x, y)
    tr, _ = split_like_bastion(len(y))
    model = train(entry_point_mlp(root, "bchard", x[tr]), x[tr], y[tr])
    torch.save(model.state_dict(), root / "bc.pt")
    torch.jit.save(torch.jit.script(model), str(root / "bc.ts"))
    export_onnx(model, torch.tensor(x[tr][:2]), root / "bc.onnx")
    (root / "threat.yaml").write_text(THREAT)
    (root / "fast_at.yaml").write_text(
        "- fast_at: {epochs: 10, init: parent, lr: 0.01, select_n: 64}\n"
    )
    # ε = 1 relative to each feature's range is the whole box: the adversary can move every
    # row anywhere, so the best the model can learn is a constant answer (accuracy at chance)
    (root / "collapse.yaml").write_text(
        "- pgd_at: {eps: 1.0, steps: 2, epochs: 3, lr: 0.01, select: last}\n"
    )
    return {"root": root, "csv": csv, "model": model, "bundle": load_dataset(str(csv))}


def comparison_of(out: Path) -> dict:
    return json.loads((out / "comparison" / "comparison.json").read_text())


def test_entry_point_mlp_hardened_with_fast_at_then_assessed(bc, monkeypatch, capsys, tmp_path):
    from bastion.models.children import load_child

    root = bc["root"]
    monkeypatch.chdir(root)  # the entry point is found from the current directory
    out = tmp_path / "child"
    code, stdout, err = run_cli(
        monkeypatch,
        capsys,
        "harden",
        "--model",
        "bc.pt",
        "--entry-point",
        "bchard:build",
        "--data",
        "bc.csv",
        "--recipe",
        "fast_at.yaml",
        "--threat",
        "threat.yaml",
        "--out",
        out,
    )
    assert code in (0, None), err
    spec = json.loads((out / "spec.json").read_text())
    assert spec["name"] == "entry-point"
    assert spec["params"]["entry_point"] == "bchard:build"
    assert spec["params"]["source_sha256"] == file_sha256(root / "bchard.py")
    assert (out / "model.safetensors").is_file() and not (out / "model.ts").exists()
    prov = json.loads((out / "provenance.json").read_text())
    parent = load_model("bc.pt", entry_point="bchard:build")
    assert prov["parent"]["sha256"] == parent.sha256 and prov["parent"]["form"] == "entry-point"
    assert prov["recipe"]["eps_mode"] == "relative"
    step = prov["recipe"]["steps"][0]
    assert step["name"] == "fast_at" and step["eps"] == 0.1 and step["init"] == "parent"
    assert any("relative to each feature's range" in n for n in prov["notes"])
    comp = comparison_of(out)
    assert comp["clean_accuracy_drop"] == pytest.approx(
        comp["accuracy"]["parent_accuracy"] - comp["accuracy"]["child_accuracy"]
    )
    assert comp["accuracy"]["collapsed"] is False and comp["verdict"] != "not_measured"
    metrics = {r["metric"]: r for r in comp["rows"]}
    robust = metrics["robust accuracy · pgd ε=0.1 Linf"]
    assert robust["child"] > robust["parent"] + 0.1  # ε relative to each feature's range
    assert "severity · pgd ε=0.1 Linf" in metrics
    assert "clean-accuracy guard" in stdout
    # the child loads back as a model directory, and through the existing entry-point route
    child = load_child(out)
    assert child.form == "entry-point" and child.sha256 == comp["child"]["sha256"]
    assert child.provenance["parent"]["sha256"] == parent.sha256
    x = bc["bundle"].test.x
    same = load_model(out, entry_point="bchard:build")
    assert same.sha256 == child.sha256
    assert torch.equal(same.predict(x), child.predict(x))
    plain = load_model(out)  # --model CHILD alone: the spec says how to rebuild it
    assert plain.sha256 == child.sha256 and plain.form == "entry-point"
    assert torch.equal(plain.predict(x), child.predict(x))
    assessed = tmp_path / "assess"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        out,
        "--entry-point",
        "bchard:build",
        "--data",
        "bc.csv",
        "--threat",
        "threat.yaml",
        "--out",
        assessed,
    )
    assert code in (0, None), err
    report = json.loads((assessed / "report.json").read_text())
    assert report["model"]["sha256"] == comp["child"]["sha256"]  # what the gate matches on
    clean = next(f for f in report["findings"] if f["attack"] == "pgd")["metrics"]
    assert clean["clean_accuracy"] > 0.85


def test_entry_point_child_refuses_a_changed_source(bc, monkeypatch, tmp_path):
    from bastion.defenses.recipes import parse_recipe
    from bastion.defenses.workflow import harden_model
    from bastion.errors import ModelError
    from bastion.models.children import load_child

    work = tmp_path / "work"
    work.mkdir()
    (work / "bchard2.py").write_text((bc["root"] / "bchard.py").read_text())
    monkeypatch.chdir(work)
    monkeypatch.syspath_prepend(str(work))
    parent = load_model(bc["root"] / "bc.pt", entry_point="bchard2:build")
    recipe = parse_recipe([{"standard": {"epochs": 1, "init": "parent"}}])
    out = tmp_path / "child"
    harden_model(parent, bc["bundle"], recipe, out, run_assessment=False)
    assert load_child(out).form == "entry-point"
    with (work / "bchard2.py").open("a") as f:
        f.write("\n# edited after hardening\n")
    sys.modules.pop("bchard2", None)
    with pytest.raises(ModelError, match="source file changed since hardening"):
        load_child(out)


def test_collapsing_recipe_exits_1_unless_the_drop_is_allowed(bc, monkeypatch, capsys, tmp_path):
    root = bc["root"]
    monkeypatch.chdir(root)
    out = tmp_path / "collapsed"
    args = [
        "harden",
        "--model",
        "bc.pt",
        "--entry-point",
        "bchard:build",
        "--data",
        "bc.csv",
        "--recipe",
        "collapse.yaml",
        "--threat",
        "threat.yaml",
        "--out",
        out,
    ]
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 1, err
    assert "regression:" in err and "Traceback" not in err
    assert "clean accuracy" in err and "--allow-accuracy-drop" in err
    comp = comparison_of(out)
    guard = comp["accuracy"]
    assert comp["verdict"] == "regression"
    assert comp["clean_accuracy_drop"] > 0.2 and guard["collapsed"] and not guard["permitted"]
    assert f"{guard['parent_accuracy']:.3f} → {guard['child_accuracy']:.3f}" in err
    if guard["child_at_chance"]:  # nothing to assess on a model at chance
        assert any(s["check"] == "child assessment" for s in comp["skipped"])
    code, _, err = run_cli(monkeypatch, capsys, *args, "--allow-accuracy-drop", "1.0")
    assert code in (0, None), err
    comp = comparison_of(out)
    assert comp["verdict"] == "regression" and comp["accuracy"]["permitted"] is True
    assert comp["accuracy"]["allowed_drop"] == 1.0


def test_accuracy_guard_arithmetic():
    from bastion.defenses.compare import AccuracyGuard

    y = torch.tensor([0] * 60 + [1] * 40)  # majority-class rate 0.6, chance guard 0.65
    ok = AccuracyGuard.measure(0.95, 0.92, y)
    assert not ok.collapsed and not ok.blocks and ok.allowed_drop == 0.05
    drop = AccuracyGuard.measure(0.95, 0.85, y)
    assert drop.collapsed and drop.blocks and not drop.child_at_chance
    assert "--allow-accuracy-drop 0.1" in drop.message()
    allowed = AccuracyGuard.measure(0.95, 0.85, y, allowed=0.1)
    assert not allowed.collapsed
    chance = AccuracyGuard.measure(0.66, 0.63, y)  # a small drop, but to chance
    assert chance.child_at_chance and chance.blocks and "chance guard 0.650" in chance.message()
    accepted = AccuracyGuard.measure(0.66, 0.63, y, allowed=0.05)  # said explicitly
    assert accepted.collapsed and accepted.permitted and not accepted.blocks
    floor = AccuracyGuard.measure(0.95, 0.9, y, min_clean_accuracy=0.92)
    assert floor.child_at_chance and floor.floor == 0.92


def test_relative_eps_training_stays_in_each_features_range(bc):
    """The training adversary in the attack space moves each feature by at most ε of its range,
    keeps frozen features and stays inside the per-feature bounds."""
    from bastion.assess.space import AttackSpace
    from bastion.defenses.adversarial import training_adversary
    from bastion.defenses.runner import in_attack_space

    train = bc["bundle"].train
    spec = train.input_spec.model_copy(update={"frozen": [0, 5]})
    space = AttackSpace.build(spec, "relative")
    zdata = in_attack_space(train.subset(slice(0, 64)), space)
    assert float(zdata.x.min()) >= 0 and float(zdata.x.max()) <= 1 and zdata.input_spec.frozen
    model = space.model(bc["model"])
    z_adv = training_adversary(
        model,
        zdata.x,
        zdata.y,
        eps=0.1,
        steps=3,
        step_size=0.05,
        bounds=space.box,
        generator=torch.Generator().manual_seed(0),
    )
    x0, x_adv = space.from_z(zdata.x), space.from_z(z_adv)
    width = spec.upper_tensor() - spec.lower_tensor()
    moved = (x_adv - x0).abs()
    assert bool((moved <= 0.1 * width + 1e-3 * (1 + width)).all())
    assert bool((moved.amax(0) > 0.05 * width)[1:5].all())  # the attack did use its budget
    assert torch.equal(x_adv[:, [0, 5]], x0[:, [0, 5]])
    assert bool((x_adv >= spec.lower_tensor() - 1e-3).all())
    assert bool((x_adv <= spec.upper_tensor() + 1e-3).all())


def test_torchscript_and_onnx_parents_get_torchscript_children(bc, tmp_path):
    from bastion.defenses.recipes import parse_recipe
    from bastion.defenses.workflow import harden_model
    from bastion.models.children import load_child

    data = bc["bundle"]
    x = data.test.x
    cases = (
        ("torchscript", load_model(bc["root"] / "bc.ts"), "script", "scratch"),
        ("onnx-torch", load_model(bc["root"] / "bc.onnx", onnx_mode="torch"), "trace", "parent"),
    )
    for form, parent, how, init in cases:
        assert parent.form == form
        recipe = parse_recipe([{"fast_at": {"epochs": 2, "init": init, "select_n": 32}}])
        out = tmp_path / form
        outcome = harden_model(parent, data, recipe, out, run_assessment=False)
        spec = json.loads((out / "spec.json").read_text())
        assert spec["name"] == "torchscript" and spec["params"]["how"] == how
        assert spec["params"]["parent_form"] == form and (out / "model.ts").is_file()
        child = load_child(out)
        direct = load_model(out / "model.ts")  # the existing TorchScript route
        assert child.sha256 == direct.sha256 == outcome.comparison.child.sha256
        assert torch.equal(child.predict(x), direct.predict(x))
        assert child.capabilities.num_classes == 2 and child.capabilities.input_shape == [30]
        acc = float((child.predict(x) == data.test.y).float().mean())
        assert acc == pytest.approx(outcome.comparison.accuracy.child_accuracy)
        assert acc > 0.8, (form, acc)
        # the parent itself was not trained in place
        assert torch.equal(parent.predict(x), load_model(parent.path, onnx_mode="torch").predict(x))


def test_torchscript_fresh_copy_is_reinitialised_and_trainable(bc):
    from bastion.defenses.runner import fresh_copy

    parent = load_model(bc["root"] / "bc.ts")
    fresh = fresh_copy(parent.module, seed=0)
    before = {k: v.clone() for k, v in parent.module.state_dict().items()}
    assert all(p.is_leaf and p.requires_grad for p in fresh.parameters())
    changed = [k for k, v in fresh.state_dict().items() if k.endswith("weight")]
    assert changed and all(not torch.equal(fresh.state_dict()[k], before[k]) for k in changed)
    assert torch.equal(fresh.state_dict()["0.mean"], before["0.mean"])  # buffers kept
    again = fresh_copy(parent.module, seed=0)
    assert all(
        torch.equal(a, b) for a, b in zip(fresh.parameters(), again.parameters(), strict=True)
    )


def test_dp_sgd_on_torchscript_is_not_applicable(bc, tmp_path):
    from bastion.defenses.estimators import NotApplicable
    from bastion.defenses.recipes import parse_recipe
    from bastion.defenses.workflow import harden_model

    parent = load_model(bc["root"] / "bc.ts")
    with pytest.raises(NotApplicable, match=r"dp_sgd is not applicable to .*TorchScript"):
        harden_model(parent, bc["bundle"], parse_recipe("dp_sgd"), tmp_path / "x")


def test_tabular_backdoor_check_uses_a_feature_trigger(bc, monkeypatch, tmp_path):
    from bastion.defenses.recipes import parse_recipe
    from bastion.defenses.workflow import harden_model

    monkeypatch.chdir(bc["root"])
    parent = load_model("bc.pt", entry_point="bchard:build")
    recipe = parse_recipe([{"sanitize": {}}, {"standard": {"epochs": 5}}])
    outcome = harden_model(parent, bc["bundle"], recipe, tmp_path / "c", run_assessment=False)
    check = outcome.comparison.backdoor
    assert check is not None and check.trigger == "features" and len(check.features) == 3
    assert check.patch_size == 0 and check.n_poisoned == round(0.05 * len(bc["bundle"].train))
    assert check.parent_attack_success > check.clean_model_attack_success  # a real backdoor
    assert outcome.comparison.sanitize["features"] == "penultimate"
    assert check.recall is not None


@pytest.fixture(scope="module")
def wine(tmp_path_factory):
    import skops.io as sio
    from sklearn.ensemble import GradientBoostingClassifier

    root = tmp_path_factory.mktemp("wine-harden")
    raw = load_wine()
    csv = write_csv(root / "wine.csv", raw.data, raw.target)
    tr, _ = split_like_bastion(len(raw.target))
    clf = GradientBoostingClassifier(n_estimators=20, max_depth=2, random_state=0)
    clf.fit(raw.data[tr], raw.target[tr])
    sio.dump(clf, root / "gb.skops")
    trust = [str(t) for t in sio.get_untrusted_types(file=root / "gb.skops")]
    (root / "threat.yaml").write_text(BLACKBOX_THREAT)
    return {"root": root, "csv": csv, "clf": clf, "trust": trust, "raw": raw}


def test_skops_gradient_boosting_sanitized_and_refit(wine, monkeypatch, capsys, tmp_path):
    from bastion.models.children import load_child

    root = wine["root"]
    trust = [a for t in wine["trust"] for a in ("--trust", t)]
    out = tmp_path / "child"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "harden",
        "--model",
        root / "gb.skops",
        *trust,
        "--data",
        wine["csv"],
        "--recipe",
        "sanitize",
        "--threat",
        root / "threat.yaml",
        "--out",
        out,
    )
    assert code in (0, None), err
    spec = json.loads((out / "spec.json").read_text())
    assert spec["name"] == "skops" and spec["params"]["file"] == "model.skops"
    child = load_model(out / "model.skops", trusted=wine["trust"])  # the existing skops route
    assert child.form == "skops"
    assert type(child.estimator) is type(wine["clf"])
    assert child.estimator.get_params() == wine["clf"].get_params()  # its own parameters
    raw = wine["raw"]
    pred = child.estimator.predict(raw.data)
    assert float((pred == raw.target).mean()) > 0.8
    comp = comparison_of(out)
    assert load_child(out, trusted=wine["trust"]).sha256 == child.sha256 == comp["child"]["sha256"]
    assert comp["sanitize"]["features"] == "input" and comp["sanitize"]["method"] == "activation"
    backdoor = comp["backdoor"]
    assert backdoor["trigger"] == "features" and len(backdoor["features"]) == 3
    groups = {r["group"] for r in comp["rows"]}
    assert "blackbox" in groups and "accuracy" in groups
    assert comp["accuracy"]["collapsed"] is False
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["recipe"]["estimator"]["form"] == "skops"
    assert prov["recipe"]["estimator"]["params"]["n_estimators"] == 20


def test_adversarial_recipes_on_skops_are_not_applicable(wine, monkeypatch, capsys, tmp_path):
    trust = [a for t in wine["trust"] for a in ("--trust", t)]
    for recipe in ("pgd_at", "sanitize+trades", "dp_sgd"):
        out = tmp_path / recipe
        code, _, err = run_cli(
            monkeypatch,
            capsys,
            "harden",
            "--model",
            wine["root"] / "gb.skops",
            *trust,
            "--data",
            wine["csv"],
            "--recipe",
            recipe,
            "--out",
            out,
        )
        assert code == 2, err
        name = recipe.split("+")[-1]
        assert (
            f"recipe step {name} is not applicable to gb (skops, GradientBoostingClassifier" in err
        )
        assert "What applies to this model: sanitize" in err and "Traceback" not in err
        assert not (out / "spec.json").exists()


def test_xgboost_booster_refit_needs_its_hyper_parameters(monkeypatch, capsys, tmp_path):
    xgb = pytest.importorskip("xgboost")
    raw = load_wine()
    csv = write_csv(tmp_path / "wine.csv", raw.data, raw.target)
    tr, _ = split_like_bastion(len(raw.target))
    booster = xgb.XGBClassifier(n_estimators=15, max_depth=2, learning_rate=0.3)
    booster.fit(raw.data[tr], raw.target[tr])
    booster.save_model(tmp_path / "wine.json")
    base = ["harden", "--model", tmp_path / "wine.json", "--data", csv, "--no-assess"]
    code, _, err = run_cli(
        monkeypatch, capsys, *base, "--recipe", "sanitize", "--out", tmp_path / "a"
    )
    assert code == 2 and "not the training hyper-parameters" in err and "estimator_params" in err
    recipe = tmp_path / "refit.yaml"
    recipe.write_text(
        "- sanitize\n- standard: {estimator_params: {max_depth: 2, learning_rate: 0.3}}\n"
    )
    out = tmp_path / "b"
    code, _, err = run_cli(monkeypatch, capsys, *base, "--recipe", recipe, "--out", out)
    assert code in (0, None), err
    child = load_model(out / "model.json")
    assert child.form == "xgboost" and child.capabilities.num_classes == 3
    params = json.loads((out / "provenance.json").read_text())["recipe"]["estimator"]["params"]
    assert params["n_estimators"] == 15 and params["max_depth"] == 2
    assert params["objective"] == "multi:softprob"
    acc = float(
        (child.predict(torch.tensor(raw.data, dtype=torch.float32)).numpy() == raw.target).mean()
    )
    assert acc > 0.8
    bad = tmp_path / "bad.yaml"
    bad.write_text("- standard: {estimator_params: {max_dept: 2}}\n")
    code, _, err = run_cli(monkeypatch, capsys, *base, "--recipe", bad, "--out", tmp_path / "c")
    assert code == 2 and "['max_dept'] are not XGBClassifier parameters" in err


def test_onnx_runtime_models_cannot_be_hardened(bc, monkeypatch, capsys, tmp_path):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "harden",
        "--model",
        bc["root"] / "bc.onnx",
        "--onnx-mode",
        "runtime",
        "--data",
        bc["csv"],
        "--recipe",
        "standard",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "does not apply to bc (onnx-runtime)" in err and "--onnx-mode torch" in err


def test_lightgbm_boosters_and_torch_estimator_params_are_refused(
    bc, monkeypatch, capsys, tmp_path
):
    lgb = pytest.importorskip("lightgbm")
    raw = load_wine()
    csv = write_csv(tmp_path / "wine.csv", raw.data, raw.target)
    lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1},
        lgb.Dataset(raw.data, raw.target),
        num_boost_round=5,
    ).save_model(str(tmp_path / "wine.txt"))
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "harden",
        "--model",
        tmp_path / "wine.txt",
        "--data",
        csv,
        "--recipe",
        "sanitize",
        "--out",
        tmp_path / "x",
    )
    assert code == 2 and "refitting LightGBM boosters is not supported" in err
    recipe = tmp_path / "r.yaml"
    recipe.write_text("- standard: {estimator_params: {max_depth: 3}}\n")
    monkeypatch.chdir(bc["root"])
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "harden",
        "--model",
        "bc.pt",
        "--entry-point",
        "bchard:build",
        "--data",
        "bc.csv",
        "--recipe",
        recipe,
        "--out",
        tmp_path / "y",
    )
    assert code == 2 and "estimator_params is not applicable to bchard:build" in err
