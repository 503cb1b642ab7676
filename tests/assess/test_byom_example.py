"""The README's "bring your own model" example runs as written: the example files are made
by examples/byom/make_models.py, then each form is assessed from the CLI."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from bastion.cli import main

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byom"
THREAT = "eps: [0.05]\nbudgets: {n_eval: 60, apgd_steps: 10, queries: 100, n_blackbox: 20, extraction_queries: [100], shadow_models: 2}\n"


@pytest.fixture(scope="module")
def byom(tmp_path_factory):
    root = tmp_path_factory.mktemp("byom")
    for name in ("make_models.py", "tabular_net.py"):
        shutil.copy(EXAMPLE / name, root / name)
    (root / "threat.yaml").write_text(THREAT)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.syspath_prepend(str(root))
    try:
        runpy.run_path(str(root / "make_models.py"), run_name="__main__")
    finally:
        sys.modules.pop("tabular_net", None)
        mp.undo()
    return root


def _assess(monkeypatch, capsys, root: Path, *args: str) -> dict:
    monkeypatch.chdir(root)
    out = root / "out" / str(abs(hash(args)))
    monkeypatch.setattr(
        sys, "argv", ["bastion", "assess", *args, "--threat", "threat.yaml", "--out", str(out)]
    )
    with pytest.raises(SystemExit) as exc:
        main()
    err = capsys.readouterr().err
    assert exc.value.code in (0, None), err
    sys.modules.pop("tabular_net", None)
    return json.loads((out / "report.json").read_text())


def test_entry_point_with_members(byom, monkeypatch, capsys):
    rep = _assess(
        monkeypatch,
        capsys,
        byom,
        "--model",
        "bc.pt",
        "--entry-point",
        "tabular_net:build",
        "--data",
        "bc.csv",
        "--members",
        "members.txt",
    )
    probes = {f["probe"] for f in rep["findings"]}
    assert {"evasion", "blackbox", "extraction", "membership"} <= probes
    clean = next(f for f in rep["findings"] if f["probe"] == "evasion")["metrics"]
    assert clean["clean_accuracy"] > 0.85


def test_onnx_and_skops(byom, monkeypatch, capsys):
    onnx = _assess(monkeypatch, capsys, byom, "--model", "bc.onnx", "--data", "bc.csv")
    assert onnx["model"]["form"] == "onnx-torch"
    skipped = {s["probe"]: s["status"] for s in onnx["skipped"]}
    assert skipped["membership"] == "not_measured"
    gb = _assess(
        monkeypatch,
        capsys,
        byom,
        "--model",
        "gb.skops",
        "--trust",
        "sklearn.tree._tree.Tree",
        "--data",
        "bc.csv",
    )
    assert gb["model"]["form"] == "skops"
    assert "evasion" not in {f["probe"] for f in gb["findings"]}
