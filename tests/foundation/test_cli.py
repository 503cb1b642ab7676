"""The CLI turns user mistakes into one line and exit code 2, never a traceback."""

import json
import sys

import pytest

from bastion.cli import main


def run_cli(monkeypatch, capsys, *args):
    monkeypatch.setattr(sys, "argv", ["bastion", *args])
    with pytest.raises(SystemExit) as exc:
        main()
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def test_help_lists_pipeline(monkeypatch, capsys):
    code, out, _ = run_cli(monkeypatch, capsys, "--help")
    assert code == 0
    for cmd in ("train", "assess", "runs", "demo"):
        assert cmd in out


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (["assess", "--model", "/nonexistent/model", "--out", "x"], "model not found"),
        (["assess", "--out", "x"], "give --profile FILE or --model DIR"),
        (["train", "--out", "x", "--data", "cifar"], "unknown dataset 'cifar'"),
        (["train", "--out", "x", "--model", "resnet"], "unknown model 'resnet'"),
        (["runs", "show", "999"], "no run with id 999"),
        (["assess", "--profile", "/nope.yaml"], "file not found: /nope.yaml"),
    ],
)
def test_user_errors_are_one_line_exit_2(monkeypatch, capsys, args, match):
    code, _, err = run_cli(monkeypatch, capsys, *args)
    assert code == 2
    assert match in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) <= 2  # one line, maybe soft-wrapped once


def test_malformed_yaml_profile(monkeypatch, capsys, tmp_path):
    p = tmp_path / "p.yaml"
    p.write_text("model: [unclosed\n")
    code, _, err = run_cli(monkeypatch, capsys, "assess", "--profile", str(p))
    assert code == 2 and "malformed YAML at line" in err


def test_profile_typo_names_the_key(monkeypatch, capsys, tmp_path, digits_model_dir):
    p = tmp_path / "p.yaml"
    p.write_text(f"model: {digits_model_dir}\nthreat_model:\n  epz: [0.1]\n")
    code, _, err = run_cli(
        monkeypatch, capsys, "assess", "--profile", str(p), "--out", str(tmp_path / "o")
    )
    assert code == 2 and "threat_model.epz: unknown key" in err


def test_bad_threat_values(monkeypatch, capsys, tmp_path, digits_model_dir):
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        str(digits_model_dir),
        "--eps",
        "-0.1",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2 and "ε values must be >= 0" in err


def test_train_then_runs_list(monkeypatch, capsys, tmp_path):
    code, out, _ = run_cli(
        monkeypatch,
        capsys,
        "train",
        "--out",
        str(tmp_path / "m"),
        "--model",
        "mlp",
        "--epochs",
        "1",
    )
    assert code == 0 and "test accuracy" in out
    spec = json.loads((tmp_path / "m" / "spec.json").read_text())
    prov = json.loads((tmp_path / "m" / "provenance.json").read_text())
    assert (
        spec["name"] == "mlp"
        and prov["train_manifest"]["n"] == 1347
        and len(prov["train_manifest"]["sha256"]) == 64
    )
