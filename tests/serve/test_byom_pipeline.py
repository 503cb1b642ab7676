"""The README's "bring your own model" pipeline, each command as written, for a tabular
entry-point model and its ONNX export: assess → harden → assess the child → gate →
attest → attest verify → guard fit → serve (real HTTP through the ASGI app, natural JSON)
→ audit verify. The example files come from examples/byom/make_models.py."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import pytest

from bastion.cli import main
from bastion.serve.settings import ServeSettings

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "byom"
THREAT = (
    "eps: [0.05]\n"
    "budgets: {n_eval: 114, pgd_steps: 10, apgd_steps: 10, queries: 100, n_blackbox: 20, "
    "extraction_queries: [100], shadow_models: 2}\n"
)
FAST_AT = "- fast_at: {epochs: 5, init: parent, lr: 0.01}\n"


@pytest.fixture(scope="module")
def byom(tmp_path_factory):
    root = tmp_path_factory.mktemp("byom-pipeline")
    for name in ("make_models.py", "tabular_net.py", "policy.yaml"):
        shutil.copy(EXAMPLE / name, root / name)
    (root / "threat.yaml").write_text(THREAT)
    (root / "fast_at.yaml").write_text(FAST_AT)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    mp.syspath_prepend(str(root))
    try:
        runpy.run_path(str(root / "make_models.py"), run_name="__main__")
    finally:
        sys.modules.pop("tabular_net", None)
        mp.undo()
    return root


def bastion(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["bastion", *map(str, args)])
    with pytest.raises(SystemExit) as exc:
        main()
    sys.modules.pop("tabular_net", None)
    out = capsys.readouterr()
    return exc.value.code or 0, out.out, out.err


@pytest.mark.parametrize(
    ("name", "model"),
    [
        ("mlp", ["--model", "bc.pt", "--entry-point", "tabular_net:build"]),
        ("onnx", ["--model", "bc.onnx"]),
    ],
)
def test_readme_pipeline(byom, name, model, monkeypatch, capsys, gateway_factory, tmp_path):
    monkeypatch.chdir(byom)
    monkeypatch.setenv("BASTION_DB", f"sqlite:///{tmp_path / 'runs.db'}")
    data = ["--data", "bc.csv"]
    out = Path("out") / name

    def ok(*args):
        code, stdout, err = bastion(monkeypatch, capsys, *args)
        assert code == 0, f"bastion {' '.join(map(str, args))}: {err}"
        return stdout

    ok(
        "assess",
        *model,
        *data,
        "--members",
        "members.txt",
        "--threat",
        "threat.yaml",
        "--out",
        out / "assess",
    )
    ok(
        "harden",
        *model,
        *data,
        "--recipe",
        "fast_at.yaml",
        "--threat",
        "threat.yaml",
        "--out",
        out / "hardened",
    )
    child = out / "hardened"
    ok(
        "assess",
        "--model",
        child,
        *data,
        "--members",
        "members.txt",
        "--threat",
        "threat.yaml",
        "--out",
        out / "assess-hardened",
    )
    report = out / "assess-hardened" / "report.json"
    gate = ok("gate", "--report", report, "--policy", "policy.yaml")
    assert "clean_accuracy_drop" in gate.replace("\n", " ") or "hardening cost" in gate
    ok("keys", "signing-init", "--out", tmp_path / "signing.key")
    ok(
        "attest",
        "--report",
        report,
        "--policy",
        "policy.yaml",
        "--key",
        tmp_path / "signing.key",
        "--out",
        out / "attestation.json",
    )
    verified = ok(
        "attest", "verify", out / "attestation.json", "--public-key", tmp_path / "signing.pub"
    )
    assert "attestation verified" in verified
    rep = json.loads(report.read_text())
    statement_subjects = json.loads((out / "attestation.json").read_text())
    assert statement_subjects["signatures"]
    assert rep["model"]["sha256"] and rep["model"]["artifacts"]
    ok("guard", "fit", "--model", child, *data)
    ok("audit", "keygen", "--key-file", tmp_path / "audit.pem")
    (tmp_path / "audit.pub").write_text(ok("audit", "pubkey", "--key-file", tmp_path / "audit.pem"))
    db = f"sqlite:///{tmp_path / 'serve.db'}"
    settings = ServeSettings.model_validate(
        {
            "db_url": db,
            "model": str(child),
            "auth": {"cache_ttl_s": 0.0},
            "reviews": {"check_every_s": 3600},
            "audit": {"key_file": str(tmp_path / "audit.pem")},
        }
    )
    rows = [
        [float(v) for v in line.split(",")[1:]]
        for line in Path("bc.csv").read_text().splitlines()[1:4]
    ]
    with gateway_factory(settings) as gw:
        r = gw.client.post("/v1/predict", json={"inputs": rows}, headers=gw.auth())
        assert r.status_code == 200, r.text
        assert len(r.json()["probabilities"]) == 3 and len(r.json()["probabilities"][0]) == 2
        assert gw.state.runtime.model_sha256 == rep["model"]["sha256"]
        bad = gw.client.post("/v1/predict", json={"inputs": [rows[0][:5]]}, headers=gw.auth())
        assert bad.status_code == 422 and "30 features" in bad.json()["detail"]
    ok("audit", "sign", "--db", db, "--key-file", tmp_path / "audit.pem")
    audit = ok("audit", "verify", "--db", db, "--key", tmp_path / "audit.pub")
    assert audit.startswith("OK")
    code, _, err = bastion(monkeypatch, capsys, "audit", "verify", "--db", db)
    assert code == 2 and "cannot vouch" in err  # the log's own key proves nothing
