"""Sweeps and the executor choice without Ray: the YAML's data list and relative paths, a
local resume from a probe's checkpoint record, a report that is not one, and Ray missing."""

from __future__ import annotations

import json
import sys

import pytest

import bastion.assess.evasion_probe as ep
from bastion.assess.api import assessment_context
from bastion.assess.blackbox_probe import BlackBoxProbe
from bastion.assess.runner import PARTIAL, run_assessment
from bastion.models.io import load_model
from tests.cli_runner import run_main
from tests.ports import free_port
from tests.scale.conftest import WHITE_BOX


def test_local_sweep_with_a_data_list_and_relative_paths(digits_mlp, tmp_path, monkeypatch, capsys):
    (tmp_path / "wb.yaml").write_text(json.dumps(WHITE_BOX.model_dump()))
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "mlp").symlink_to(digits_mlp)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(
        "models: [{path: models/mlp}]\nthreat_models: [{path: wb.yaml}]\n"
        "data: [{name: d, data: digits}]\nout: results\n"
    )
    code, out, err = run_main(monkeypatch, capsys, "sweep", sweep)
    assert code == 0, err
    pair = tmp_path / "results" / "mlp__wb__d"
    assert {"report.json", "report.html", "findings.sarif"} <= {p.name for p in pair.iterdir()}
    summary = json.loads((tmp_path / "results" / "summary.json").read_text())
    (row,) = summary["rows"]
    assert row["pair"] == "mlp__wb__d" and row["data"] == "d" and row["status"] == "assessed"
    report = json.loads((pair / "report.json").read_text())
    worst = min(
        f["metrics"]["robust_accuracy"]
        for f in report["findings"]
        if f["probe"] == "evasion" and "robust_accuracy" in f["metrics"]
    )
    assert row["metrics"]["evasion.robust_accuracy"] == worst
    assert "✓ mlp__wb__d: evasion" in out and "✓ mlp__wb__d: blackbox" in out
    (pair / "report.json").write_text("{cut sho")
    code, out, err = run_main(monkeypatch, capsys, "sweep", sweep)
    assert code == 2 and "not a report (edited or cut short): delete it" in err
    assert len(err.strip().splitlines()) == 1


def test_local_resume_skips_a_probe_with_a_finished_record(digits_mlp, tmp_path, monkeypatch):
    """Cut the checkpoint after the evasion probe's record: the rerun does not call the
    evasion probe at all (before probe records it re-ran its strongest attack), and the
    black-box sanity check still gets the recorded masks: same report."""
    ctx = lambda out: assessment_context(load_model(digits_mlp), "digits", WHITE_BOX, out)  # noqa: E731
    full = run_assessment(ctx(tmp_path / "full"))
    lines = (tmp_path / "full" / PARTIAL).read_text().splitlines()
    kinds = [(json.loads(x).get("kind"), json.loads(x).get("data", {}).get("probe")) for x in lines]
    cut = kinds.index(("probe", "evasion"))
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / PARTIAL).write_text("\n".join(lines[: cut + 1]) + "\n")
    calls, masks = [], []
    monkeypatch.setattr(ep.EvasionProbe, "run", lambda self, c: calls.append(1) or iter(()))
    monkeypatch.setattr(
        ep.EvasionProbe, "run_shard", lambda self, c, shard: calls.append(shard) or iter(())
    )
    sanity = BlackBoxProbe._sanity

    def spy(self, c, attack, eps, fooled):
        masks.append({e: int(m.sum()) for e, m in c.robust_masks.items()})
        return sanity(self, c, attack, eps, fooled)

    monkeypatch.setattr(BlackBoxProbe, "_sanity", spy)
    resumed = run_assessment(ctx(tmp_path / "cut"))
    assert calls == []
    robust = next(f for f in full.findings if f.attack == "pgd").metrics["robust_accuracy"]
    assert masks and all(m == {0.1: round(robust * 40)} for m in masks)  # pgd: the strongest
    strip = lambda r: [f.model_dump(exclude={"seconds"}) for f in r.findings]  # noqa: E731
    assert strip(resumed) == strip(full) and resumed.warnings == full.warnings
    assert resumed.skipped == full.skipped and resumed.score == full.score


def test_ray_missing_is_one_line(digits_mlp, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    sweep = tmp_path / "s.yaml"
    sweep.write_text(
        f"models: [{{path: {digits_mlp}}}]\nthreat_models: [{{name: a, threat: {{}}}}]\n"
    )
    for argv in (
        ["assess", "--model", digits_mlp, "--out", tmp_path / "a", "--executor", "ray"],
        ["sweep", sweep, "--out", tmp_path / "s", "--executor", "ray"],
    ):
        code, _, err = run_main(monkeypatch, capsys, *argv)
        assert code == 2, err
        assert err.strip().splitlines() == [
            "error: --executor ray needs Ray: install the ray extra (pip install 'bastion-ml[ray]')"
        ]
    assert not (tmp_path / "s" / "summary.json").exists()


def test_unreachable_ray_address_is_one_line(digits_mlp, tmp_path, monkeypatch, capsys):
    """Ray retries an unreachable address without end: the CLI refuses it before any work."""
    pytest.importorskip("ray")
    code, _, err = run_main(
        monkeypatch,
        capsys,
        "assess",
        "--model",
        digits_mlp,
        "--out",
        tmp_path / "a",
        "--executor",
        "ray",
        "--address",
        f"127.0.0.1:{free_port()}",
    )
    assert code == 2
    assert err.count("\n") == 1 and "error: cannot reach Ray at 127.0.0.1:" in err
    assert not (tmp_path / "a").exists()
