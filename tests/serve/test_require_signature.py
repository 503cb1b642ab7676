"""`bastion serve --require-signature PUB.pem`: a model whose OpenSSF model-signing
signature does not verify is refused (one line, exit 2) before anything loads it and
before "serving on"; a signed, untouched model is served."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from bastion.cli import main
from bastion.scan.signing import generate_model_key, sign_model


@pytest.fixture()
def signed_model(digits, tmp_path) -> tuple[Path, Path, Path]:
    """A tiny untrained MLP made in code (its provenance holds the input spec), signed."""
    import torch

    from bastion.models.io import save_model
    from bastion.models.zoo import build_model, zoo_spec

    torch.manual_seed(0)
    spec = zoo_spec("mlp", digits.train.shape, digits.train.num_classes, hidden=4, depth=1)
    model = save_model(
        build_model(spec),
        spec,
        tmp_path / "model",
        provenance={"train_manifest": digits.train.manifest().model_dump(mode="json")},
    )
    keys = generate_model_key(tmp_path / "keys" / "model.key")
    sign_model(model, keys.private)
    return model, keys.public, tmp_path


@pytest.fixture()
def served(monkeypatch) -> list[str]:
    """uvicorn's serving loop replaced by a recorder, and a count of model loads."""
    import uvicorn

    from bastion.serve import runtime

    calls: list[str] = []
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: calls.append("serve"))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, *a, **kw: calls.append("serve"))
    real = runtime.Runtime.from_settings.__func__

    def counted(cls, settings):
        calls.append("load")
        return real(cls, settings)

    monkeypatch.setattr(runtime.Runtime, "from_settings", classmethod(counted))
    return calls


def serve(monkeypatch, capsys, *args) -> tuple[int, str, str]:
    argv = ["bastion", "serve", *[str(a) for a in args]]
    monkeypatch.setattr(sys, "argv", argv)
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_signed_model_is_served(signed_model, served, monkeypatch, capsys):
    model, pub, _ = signed_model
    with socket.socket() as s:  # a free port: serving binds it before the (recorded) loop
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, out, err = serve(
        monkeypatch, capsys, "--model", model, "--require-signature", pub, "--port", port
    )
    assert code == 0, err
    assert out.startswith(f"signature OK {model}: 3 file(s) match the signature")
    assert f"serving {model} (model-dir) on http://127.0.0.1:{port}" in out
    assert served == ["load", "serve"]


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (
            lambda m, k, t: (m / "model.safetensors").write_bytes(b"\0" * 16),
            "changed: model.safetensors",
        ),
        (lambda m, k, t: (m / "model.sig").unlink(), "no signature at"),
        (lambda m, k, t: (m / "extra.py").write_text("import os"), "not signed: extra.py"),
        (
            lambda m, k, t: k.write_bytes(generate_model_key(t / "other.key").public.read_bytes()),
            "signed by another key",
        ),
    ],
    ids=["tampered", "unsigned", "extra-file", "wrong-key"],
)
def test_refused_before_loading(signed_model, served, monkeypatch, capsys, tamper, reason):
    model, pub, tmp = signed_model
    tamper(model, pub, tmp)
    code, out, err = serve(monkeypatch, capsys, "--model", model, "--require-signature", pub)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and reason in err
    assert "refusing to load" in err and "serving" not in out
    assert served == []  # the model was never loaded, nothing was bound


def test_entry_point_refused(signed_model, served, monkeypatch, capsys):
    model, pub, _ = signed_model
    code, _, err = serve(
        monkeypatch,
        capsys,
        "--entry-point",
        "tests.x:build",
        "--weights",
        model / "model.safetensors",
        "--require-signature",
        pub,
    )
    assert code == 2 and "does not cover" in err and served == []


def test_tampered_model_real_process(signed_model):
    """The real command in a subprocess: exit 2, one line on stderr, never "serving on"."""
    model, pub, _ = signed_model
    with open(model / "spec.json", "a") as f:
        f.write(" ")
    env = {**os.environ, "BASTION_PROGRESS": "0"}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bastion.cli",
            "serve",
            "--model",
            str(model),
            "--require-signature",
            str(pub),
            "--db",
            "sqlite:///:memory:",
            "--port",
            "1",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: refusing to load {model}: its signature does not verify: the files differ "
        "from the signed ones: changed: spec.json"
    ]
    assert "serving" not in proc.stdout
