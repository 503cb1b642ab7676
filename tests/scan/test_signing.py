"""Model signing in the OpenSSF model-signing format: sign, verify, every way to fail, the
keys, interoperability with model-signing's own verifier, and the `bastion attest` CLI."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from typer.testing import CliRunner

from bastion.cli import build_app
from bastion.errors import ConfigError, IntegrityError
from bastion.scan.signing import (
    ModelKeyError,
    default_signature_path,
    generate_model_key,
    require_signature,
    sign_model,
    verify_model,
)
from tests.cli_runner import run_main

runner = CliRunner()


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    """A tiny model directory made in code (an MLP's weights, spec and provenance)."""
    import torch

    from bastion.models.io import save_model
    from bastion.models.zoo import build_model, zoo_spec

    torch.manual_seed(0)
    spec = zoo_spec("mlp", (1, 8, 8), 10, hidden=4, depth=1)
    return save_model(build_model(spec), spec, tmp_path / "model", provenance={"data": "digits"})


@pytest.fixture()
def keys(tmp_path):
    return generate_model_key(tmp_path / "keys" / "model.key")


@pytest.fixture()
def other_keys(tmp_path):
    return generate_model_key(tmp_path / "keys" / "other.key")


def test_sign_then_verify_a_directory(model_dir, keys):
    signed = sign_model(model_dir, keys.private)
    assert signed.signature == model_dir / "model.sig" == default_signature_path(model_dir)
    assert signed.files == ("model.safetensors", "provenance.json", "spec.json")
    assert "model.sig" not in signed.files  # the signature does not hash itself
    result = verify_model(model_dir, keys.public)
    assert result.ok, result.reason
    assert result.files == signed.files and result.digest == signed.digest
    assert result.key_id == keys.key_id == signed.key_id
    assert result.line().startswith(f"OK {model_dir}: 3 file(s)")


def test_the_signature_is_readable_by_model_signing_itself(model_dir, keys):
    """Format check with an independent verifier: model-signing's own API."""
    from model_signing import verifying

    sign_model(model_dir, keys.private)
    bundle = json.loads((model_dir / "model.sig").read_text())
    assert bundle["mediaType"] == "application/vnd.dev.sigstore.bundle.v0.3+json"
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    assert statement["predicateType"] == "https://model_signing/signature/v1.0"
    assert "model.sig" in statement["predicate"]["serialization"]["ignore_paths"]
    verifying.Config().use_elliptic_key_verifier(public_key=keys.public).verify(
        model_dir, model_dir / "model.sig"
    )
    (model_dir / "spec.json").write_text("{}")
    with pytest.raises(ValueError, match="Signature mismatch"):
        verifying.Config().use_elliptic_key_verifier(public_key=keys.public).verify(
            model_dir, model_dir / "model.sig"
        )


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (lambda d: (d / "model.safetensors").write_bytes(b"\0" * 64), "changed: model.safetensors"),
        (lambda d: (d / "spec.json").unlink(), "missing: spec.json"),
        (lambda d: (d / "guard.json").write_text("{}"), "not signed: guard.json"),
        (lambda d: (d / "sub").mkdir() or (d / "sub" / "x.pt").write_bytes(b"1"), "sub/x.pt"),
    ],
    ids=["changed", "missing", "extra", "extra-nested"],
)
def test_any_file_change_fails(model_dir, keys, tamper, reason):
    sign_model(model_dir, keys.private)
    tamper(model_dir)
    result = verify_model(model_dir, keys.public)
    assert not result.ok
    assert reason in result.reason
    assert result.line().startswith(f"FAIL {model_dir}: the files differ from the signed ones")


def test_wrong_key_missing_and_altered_signatures_fail(model_dir, keys, other_keys, tmp_path):
    result = verify_model(model_dir, keys.public)
    assert not result.ok and "no signature at" in result.reason
    sign_model(model_dir, keys.private)
    result = verify_model(model_dir, other_keys.public)
    assert not result.ok and "signed by another key" in result.reason

    # a statement rewritten to match a tampered file: the DSSE signature no longer matches
    (model_dir / "spec.json").write_text('{"name": "mlp", "params": {}}')
    bundle = json.loads((model_dir / "model.sig").read_text())
    statement = json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))
    import hashlib

    new = hashlib.sha256((model_dir / "spec.json").read_bytes()).hexdigest()
    for r in statement["predicate"]["resources"]:
        if r["name"] == "spec.json":
            r["digest"] = new
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    forged = tmp_path / "forged.sig"
    forged.write_text(json.dumps(bundle))
    result = verify_model(model_dir, keys.public, signature=forged)
    assert not result.ok and "does not verify with the given public key" in result.reason

    forged.write_text("not json")
    result = verify_model(model_dir, keys.public, signature=forged)
    assert not result.ok and "not a model-signing signature bundle" in result.reason


def test_single_file_and_signature_elsewhere(tmp_path, keys):
    model = tmp_path / "clf.onnx"
    model.write_bytes(b"pretend onnx graph")
    signed = sign_model(model, keys.private)
    assert signed.signature == tmp_path / "clf.onnx.sig" and signed.files == ("clf.onnx",)
    assert verify_model(model, keys.public).ok
    model.write_bytes(b"pretend onnx graph!")
    result = verify_model(model, keys.public)
    assert not result.ok and "clf.onnx changed since it was signed" in result.reason


def test_explicit_signature_inside_or_outside_the_directory(model_dir, keys, tmp_path):
    inside = model_dir / "signatures" / "release.sig"
    sign_model(model_dir, keys.private, signature=inside)
    assert verify_model(model_dir, keys.public, signature=inside).ok
    outside = tmp_path / "elsewhere.sig"
    sign_model(model_dir, keys.private, signature=outside)
    # the first signature is now a file of the model that the second one covers
    assert verify_model(model_dir, keys.public, signature=outside).ok
    inside.write_text("changed")
    result = verify_model(model_dir, keys.public, signature=outside)
    assert not result.ok and "changed: signatures/release.sig" in result.reason


def test_keys_refused_with_a_reason(tmp_path, model_dir, keys):
    ed = tmp_path / "ed.key"
    ed.write_bytes(
        Ed25519PrivateKey.generate().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    os.chmod(ed, 0o600)
    with pytest.raises(ModelKeyError, match=r"Ed25519 keys cannot sign models.*ECDSA"):
        sign_model(model_dir, ed)
    os.chmod(keys.private, 0o644)
    with pytest.raises(ModelKeyError, match="accessible by group or others"):
        sign_model(model_dir, keys.private)
    os.chmod(keys.private, 0o600)
    with pytest.raises(ModelKeyError, match=r"not a PEM private key \(that is a public key"):
        sign_model(model_dir, keys.public)
    with pytest.raises(ModelKeyError, match="holds a private key: verify with the public key"):
        verify_model(model_dir, keys.private)
    with pytest.raises(ModelKeyError, match="not found"):
        verify_model(model_dir, tmp_path / "nope.pub")
    with pytest.raises(ConfigError, match="model not found"):
        sign_model(tmp_path / "nope", keys.private)
    with pytest.raises(ModelKeyError, match="already exists"):
        generate_model_key(keys.private)
    assert stat.S_IMODE(keys.private.stat().st_mode) == 0o600


def test_p384_key_signs(model_dir, tmp_path):
    k = generate_model_key(tmp_path / "p384.key", curve="P-384")
    sign_model(model_dir, k.private)
    assert verify_model(model_dir, k.public).ok
    with pytest.raises(ModelKeyError, match="curve 'P-999'"):
        generate_model_key(tmp_path / "bad.key", curve="P-999")


def test_require_signature_refuses_what_it_does_not_cover(model_dir, keys, tmp_path):
    with pytest.raises(IntegrityError, match=r"refusing to load .*no signature"):
        require_signature(model_dir, keys.public)
    sign_model(model_dir, keys.private)
    assert require_signature(model_dir, keys.public).ok
    with pytest.raises(ConfigError, match="entry-point runs code the signature does not cover"):
        require_signature(None, keys.public, entry_point="m:f")
    with pytest.raises(ConfigError, match="not inside the signed model"):
        require_signature(model_dir, keys.public, weights=tmp_path / "w.pt")


def test_cli_sign_and_verify_model(model_dir, keys, other_keys, monkeypatch, capsys):
    code, out, _ = run_main(monkeypatch, capsys, "attest", "sign", model_dir, "--key", keys.private)
    assert code == 0 and "signed" in out and "3 file(s)" in out
    assert (model_dir / "model.sig").is_file()
    code, out, _ = run_main(
        monkeypatch, capsys, "attest", "verify-model", model_dir, "--key", keys.public
    )
    assert code == 0 and out.startswith("OK ") and len(out.strip().splitlines()) == 1
    code, _, err = run_main(
        monkeypatch, capsys, "attest", "verify-model", model_dir, "--key", other_keys.public
    )
    assert code == 1 and err.startswith("FAIL ") and "another key" in err
    (model_dir / "model.safetensors").write_bytes(b"x")
    code, _, err = run_main(
        monkeypatch, capsys, "attest", "verify-model", model_dir, "--key", keys.public
    )
    assert code == 1 and "changed: model.safetensors" in err and len(err.strip().splitlines()) == 1
    # usage errors: exit 2, one line
    code, _, err = run_main(
        monkeypatch, capsys, "attest", "verify-model", model_dir, "--key", keys.private
    )
    assert code == 2 and "holds a private key" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_main(
        monkeypatch, capsys, "attest", "verify-model", "nope", "--key", keys.public
    )
    assert code == 2 and "model not found: nope" in err
    code, _, err = run_main(monkeypatch, capsys, "attest", "verify", model_dir)
    assert code == 2 and "use `bastion attest verify-model" in err


def test_cli_keygen_and_defaults(tmp_path, model_dir, monkeypatch):
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    r = runner.invoke(build_app(), ["keys", "model-signing-init"])
    assert r.exit_code == 0, r.output
    key = tmp_path / "cfg" / "bastion" / "model-signing.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.with_suffix(".pub").is_file()
    r = runner.invoke(build_app(), ["attest", "sign", str(model_dir)])  # the default key
    assert r.exit_code == 0, r.output
    r = runner.invoke(build_app(), ["attest", "verify-model", str(model_dir)])
    assert r.exit_code == 0 and "OK" in r.output
    r = runner.invoke(build_app(), ["keys", "model-signing-init"])
    assert isinstance(r.exception, ModelKeyError) and "pass --force" in str(r.exception)
