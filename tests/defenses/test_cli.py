"""`bastion harden`: the child model directory, its provenance, the comparison report, resume,
and one-line errors."""

import json
import re

import pytest

from bastion.models.io import load_model
from tests.cli_runner import run_main as run_cli

THREAT = """eps: [0.1]
probes: [evasion]
attacks: [pgd]
curve_eps: [0.05, 0.1, 0.2]
budgets: {n_eval: 60, pgd_steps: 5}
"""


def test_harden_writes_child_provenance_and_comparison(
    monkeypatch, capsys, tmp_path, digits_model_dir
):
    threat = tmp_path / "threat.yaml"
    threat.write_text(THREAT)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("- fast_at: {epochs: 2, init: parent, lr: 0.002, select_n: 64}\n")
    out = tmp_path / "child"
    args = [
        "harden",
        "--model",
        str(digits_model_dir),
        "--recipe",
        str(recipe),
        "--threat",
        str(threat),
        "--out",
        str(out),
    ]
    code, stdout, err = run_cli(monkeypatch, capsys, *args)
    assert code in (0, None), err
    child, parent = load_model(out), load_model(digits_model_dir)
    prov = child.provenance
    assert prov["parent"]["sha256"] == parent.sha256
    assert prov["parent"]["path"] == str(digits_model_dir)
    step = prov["recipe"]["steps"][0]
    assert step["name"] == "fast_at" and step["eps"] == 0.1 and step["collapse_drop"] == 0.2
    assert step["epochs"] == 2 and step["init"] == "parent" and "alpha" in step
    assert prov["train_manifest"]["sha256"] and prov["train_manifest"]["n"] == 1347
    comp = json.loads((out / "comparison" / "comparison.json").read_text())
    metrics = {r["metric"]: r for r in comp["rows"]}
    robust = metrics["robust accuracy · pgd ε=0.1 Linf"]
    success = metrics["attack success · pgd ε=0.1 Linf"]
    assert robust["child"] > robust["parent"] and success["child"] < success["parent"]
    assert "training time (s)" in metrics and comp["training"]["epochs_run"] == 2
    assert comp["curves"]["parent"]["eps"] == [0.05, 0.1, 0.2]
    html = (out / "comparison" / "comparison.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    assert re.search(r"(src|href)=['\"]?(https?:)?//", html) is None  # self-contained: no CDN
    assert (out / "comparison" / "child" / "report.json").exists()
    assert "robust accuracy" in stdout


def test_harden_resumes_after_a_kill(monkeypatch, tmp_path, digits, digits_model):
    from bastion.defenses import adversarial
    from bastion.defenses.recipes import parse_recipe
    from bastion.defenses.workflow import harden_model

    recipe = parse_recipe([{"fast_at": {"epochs": 3, "init": "parent", "select_n": 32}}])
    real, calls = adversarial.robust_accuracy, []

    def dies_in_epoch_two(*a, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second epoch's check
        return real(*a, **kw)

    monkeypatch.setattr(adversarial, "robust_accuracy", dies_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        harden_model(digits_model, digits, recipe, tmp_path / "out", run_assessment=False)
    monkeypatch.setattr(adversarial, "robust_accuracy", real)
    outcome = harden_model(digits_model, digits, recipe, tmp_path / "out", run_assessment=False)
    assert outcome.result.train.resumed_from == 1 and outcome.result.train.epochs_run == 3
    assert outcome.comparison.training["resumed_from"] == 1
    # a different recipe does not pick up that checkpoint
    other = parse_recipe([{"fast_at": {"epochs": 2, "init": "parent", "select_n": 32}}])
    fresh = harden_model(digits_model, digits, other, tmp_path / "out", run_assessment=False)
    assert fresh.result.train.resumed_from == 0


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (
            ["--recipe", "adversarial", "--model", "MODEL"],
            "unknown recipe 'adversarial': choose from dp_sgd, fast_at, pgd_at, sanitize",
        ),
        (["--recipe", "trades+dp_sgd", "--model", "MODEL"], "a recipe trains once"),
        (["--recipe", "dp_sgd", "--model", "/nonexistent"], "model not found"),
        (["--recipe", "trades"], "give --profile FILE or --model DIR"),
        (["--recipe", "nope.yaml", "--model", "MODEL"], "file not found: nope.yaml"),
    ],
)
def test_harden_user_errors_exit_2(monkeypatch, capsys, tmp_path, digits_model_dir, args, match):
    args = [str(digits_model_dir) if a == "MODEL" else a for a in args]
    code, _, err = run_cli(monkeypatch, capsys, "harden", *args, "--out", str(tmp_path / "o"))
    assert code == 2
    assert match in err and "Traceback" not in err
