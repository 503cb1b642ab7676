"""`bastion attest` on the model forms users bring: an entry-point MLP (weights + source),
an ONNX file and a skops model, each assessed first with `bastion assess` from the CLI.
The attestation covers the very files the report hashed; verify names any changed byte;
attesting a model whose files differ from the report's is refused (exit 2, one line)."""

from __future__ import annotations

import base64
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer

from bastion.models.loaded import Artifact, artifacts_sha256
from tests.cli_runner import run_main as run_cli
from tests.tabular_models import entry_point_mlp, export_onnx, split_like_bastion, train, write_csv

from .conftest import EXAMPLE_POLICY

MODULE_NAME = "attestnet"
THREAT = """\
eps: [0.1]
attacks: [fgsm, pgd]
curve_eps: [0.1]
probes: [evasion, blackbox]
budgets: {n_eval: 24, pgd_steps: 3, queries: 20, n_blackbox: 6}
"""


def flip_byte(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    i = len(data) // 2 if at is None else at
    data[i] ^= 0x01
    path.write_bytes(bytes(data))


def statement(att: Path) -> dict:
    return json.loads(base64.b64decode(json.loads(att.read_text())["payload"]))


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Raw breast-cancer CSV, an MLP (entry point + .pt, and its ONNX export), an untrained
    twin's ONNX export, and two scikit-learn gradient-boosting models in skops."""
    import skops.io as sio
    from sklearn.ensemble import GradientBoostingClassifier

    torch.manual_seed(0)
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("forms")
    raw = load_breast_cancer()
    x, y = raw.data.astype(np.float32), raw.target
    tr = split_like_bastion(len(y))[0].numpy()
    model = train(entry_point_mlp(root, MODULE_NAME, x[tr]), x[tr], y[tr], steps=100)
    twin = entry_point_mlp(root, MODULE_NAME, x[tr]).eval()  # same architecture, untrained
    torch.save(model.state_dict(), root / "bc.pt")
    for m, name in ((model, "bc.onnx"), (twin, "twin.onnx")):
        export_onnx(m, torch.tensor(x[tr][:2]), root / name)
    for n, name in ((10, "gb.skops"), (5, "gb5.skops")):
        clf = GradientBoostingClassifier(n_estimators=n, max_depth=2, random_state=0)
        sio.dump(clf.fit(x[tr], y[tr]), root / name)
    trust = sorted(set(sio.get_untrusted_types(file=root / "gb.skops")))
    write_csv(root / "bc.csv", x, y)
    (root / "threat.yaml").write_text(THREAT)
    return {"root": root, "trust": trust}


@pytest.fixture()
def work(models, tmp_path, monkeypatch):
    """A private copy of the model files (tests change bytes), the working directory there,
    a signing key, and the entry-point module forgotten before and after."""
    for f in models["root"].iterdir():
        shutil.copy(f, tmp_path / f.name)
    monkeypatch.chdir(tmp_path)
    sys.modules.pop(MODULE_NAME, None)
    from bastion.gate.keys import generate_signing_key

    keys = generate_signing_key(tmp_path / "keys" / "signing.key")
    yield {"dir": tmp_path, "key": keys.private, "pub": keys.public, "trust": models["trust"]}
    sys.modules.pop(MODULE_NAME, None)


def assess(monkeypatch, capsys, out: str, *model_args) -> dict:
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "assess",
        *model_args,
        "--data",
        "bc.csv",
        "--threat",
        "threat.yaml",
        "--out",
        out,
    )
    assert code == 0, err
    return json.loads((Path(out) / "report.json").read_text())


def attest(monkeypatch, capsys, w, report: str, *extra):
    return run_cli(
        monkeypatch,
        capsys,
        "attest",
        "--report",
        report,
        "--policy",
        EXAMPLE_POLICY,
        "--key",
        w["key"],
        *extra,
    )


def verify(monkeypatch, capsys, w, att: Path):
    return run_cli(monkeypatch, capsys, "attest", "verify", att, "--public-key", w["pub"])


def test_entry_point_mlp_weights_and_source(work, monkeypatch, capsys):
    w = work
    rep = assess(
        monkeypatch, capsys, "a", "--model", "bc.pt", "--entry-point", f"{MODULE_NAME}:build"
    )
    assert rep["model"]["form"] == "entry-point"
    assert {a["role"] for a in rep["model"]["artifacts"]} == {"weights", "source"}

    # from the report alone: its artifacts at the recorded paths (bc.pt is relative)
    code, out, err = attest(monkeypatch, capsys, w, "a")
    assert code == 0, err
    att = w["dir"] / "a" / "attestation.dsse.json"
    st = statement(att)
    names = {s["name"]: s["digest"]["sha256"] for s in st["subject"]}
    assert {
        "model/bc.pt",
        f"model/{MODULE_NAME}.py",
        "report/report.json",
        "dataset/manifest.json",
    } <= set(names)
    by_role = {a["role"]: a for a in st["predicate"]["model"]["artifacts"]}
    assert by_role["weights"]["sha256"] == names["model/bc.pt"]
    assert by_role["source"]["sha256"] == names[f"model/{MODULE_NAME}.py"]
    # the attested files are exactly the assessed model: they hash to the report's identity
    recorded = [Artifact(**a) for a in rep["model"]["artifacts"]]
    assert {a.sha256 for a in recorded} == {a["sha256"] for a in by_role.values()}
    assert (
        artifacts_sha256(recorded) == rep["model"]["sha256"] == st["predicate"]["model"]["sha256"]
    )
    assert st["predicate"]["model"]["form"] == "entry-point"
    code, out, err = verify(monkeypatch, capsys, w, att)
    assert code == 0 and "attestation verified" in out, out + err

    # the same model through the options of `bastion assess` attests too
    code, _, err = attest(
        monkeypatch,
        capsys,
        w,
        "a",
        "--model",
        "bc.pt",
        "--entry-point",
        f"{MODULE_NAME}:build",
        "--out",
        "b.json",
    )
    assert code == 0, err
    assert statement(w["dir"] / "b.json")["predicate"]["model"]["found_by"] == "loaded"

    # one byte of the entry point's source changes: verify names it
    source = w["dir"] / f"{MODULE_NAME}.py"
    original = source.read_bytes()
    flip_byte(source)
    code, out, err = verify(monkeypatch, capsys, w, att)
    assert code == 1
    assert f"model/{MODULE_NAME}.py changed since signing" in err
    assert "model/bc.pt changed" not in err
    code, _, err = attest(monkeypatch, capsys, w, "a", "--out", "c.json")
    assert code == 2 and "assessed the source file with sha256" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    source.write_bytes(original)

    # one byte of the weights changes
    flip_byte(w["dir"] / "bc.pt")
    code, out, err = verify(monkeypatch, capsys, w, att)
    assert code == 1 and "model/bc.pt changed since signing" in err
    code, _, err = attest(monkeypatch, capsys, w, "a", "--out", "c.json")
    assert code == 2 and "assessed the weights file with sha256" in err and "bc.pt" in err
    assert not (w["dir"] / "c.json").exists()


def test_onnx_file(work, monkeypatch, capsys):
    w = work
    rep = assess(monkeypatch, capsys, "o", "--model", "bc.onnx", "--onnx-mode", "torch")
    assert rep["model"]["form"] == "onnx-torch"
    code, _, err = attest(monkeypatch, capsys, w, "o/report.json")
    assert code == 0, err
    att = w["dir"] / "o" / "attestation.dsse.json"
    names = {s["name"] for s in statement(att)["subject"]}
    assert "model/bc.onnx" in names
    assert verify(monkeypatch, capsys, w, att)[0] == 0

    # another ONNX model (same architecture, other weights) is not the assessed one
    code, _, err = attest(monkeypatch, capsys, w, "o", "--model", "twin.onnx", "--out", "x.json")
    assert code == 2 and "assessed a model with sha256" in err and "twin.onnx" in err
    assert len(err.strip().splitlines()) == 1

    flip_byte(w["dir"] / "bc.onnx", at=-8)
    code, _, err = verify(monkeypatch, capsys, w, att)
    assert code == 1 and "model/bc.onnx changed since signing" in err
    code, _, err = attest(monkeypatch, capsys, w, "o", "--out", "x.json")
    assert code == 2 and "assessed the onnx file with sha256" in err


def test_skops_model(work, monkeypatch, capsys):
    w = work
    trust = [a for t in w["trust"] for a in ("--trust", t)]
    rep = assess(monkeypatch, capsys, "s", "--model", "gb.skops", *trust)
    assert rep["model"]["form"] == "skops"
    assert any(s["probe"] == "evasion" and s["status"] == "not_applicable" for s in rep["skipped"])
    code, out, err = attest(monkeypatch, capsys, w, "s")
    assert code == 0, err
    # the gate the attestation records says why the gradient rules are not measured
    assert "evasion: not applicable" in out
    att = w["dir"] / "s" / "attestation.dsse.json"
    st = statement(att)
    assert "model/gb.skops" in {s["name"] for s in st["subject"]}
    assert st["predicate"]["model"]["artifacts"][0]["role"] == "skops"
    assert verify(monkeypatch, capsys, w, att)[0] == 0

    code, _, err = attest(
        monkeypatch, capsys, w, "s", "--model", "gb5.skops", *trust, "--out", "x.json"
    )
    assert code == 2 and "assessed a model with sha256" in err and "gb5.skops" in err

    flip_byte(w["dir"] / "gb.skops")
    code, _, err = verify(monkeypatch, capsys, w, att)
    assert code == 1 and "model/gb.skops changed since signing" in err
    code, _, err = attest(monkeypatch, capsys, w, "s", "--out", "x.json")
    assert code == 2 and "assessed the skops file with sha256" in err


def test_moved_model_files_verify_with_overrides(work, monkeypatch, capsys):
    w = work
    assess(monkeypatch, capsys, "o", "--model", "bc.onnx", "--onnx-mode", "torch")
    assert attest(monkeypatch, capsys, w, "o")[0] == 0
    att = w["dir"] / "o" / "attestation.dsse.json"
    moved = w["dir"] / "moved"
    moved.mkdir()
    shutil.move(w["dir"] / "bc.onnx", moved / "renamed.onnx")
    code, _, err = verify(monkeypatch, capsys, w, att)
    assert code == 1 and "model/bc.onnx: file missing" in err
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "attest",
        "verify",
        att,
        "--public-key",
        w["pub"],
        "--subject",
        f"model/bc.onnx={moved / 'renamed.onnx'}",
    )
    assert code == 0, err
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        "attest",
        "verify",
        att,
        "--public-key",
        w["pub"],
        "--subject",
        "model/bc.onnx",
    )
    assert code == 2 and "write NAME=PATH" in err
    # a report moved away from where assess ran cannot find the relative model path
    monkeypatch.chdir(moved)
    code, _, err = attest(monkeypatch, capsys, w, w["dir"] / "o", "--out", "y.json")
    assert code == 2 and "is not at" in err and "run attest from there" in err


def test_a_report_about_a_remote_endpoint_has_nothing_to_attest(work, monkeypatch, capsys):
    from bastion.assess.schema import DatasetRef, ModelRef, Report, ThreatModel

    w = work
    rep = Report(
        model=ModelRef(name="http://127.0.0.1:9/predict", sha256="a" * 64, form="http"),
        dataset=DatasetRef(name="bc", sha256="1" * 64, n=10),
        threat_model=ThreatModel(),
    )
    (w["dir"] / "r.json").write_text(rep.model_dump_json())
    code, _, err = attest(monkeypatch, capsys, w, "r.json")
    assert code == 2 and "a remote endpoint (http)" in err and "no model to attest" in err
