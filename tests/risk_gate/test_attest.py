"""Signing keys and attestations: round trip, and every kind of tampering is caught and named."""

from __future__ import annotations

import base64
import json
import os
import stat

import pytest

from bastion.errors import ConfigError, IntegrityError
from bastion.gate.attest import (
    PAYLOAD_TYPE,
    STATEMENT_TYPE,
    create_attestation,
    pae,
    verify_attestation,
)
from bastion.gate.keys import (
    ENV_KEY,
    SigningKeyError,
    generate_signing_key,
    load_public_key,
    load_signing_key,
)
from bastion.gate.policy import load_policy
from bastion.risk.evidence import file_sha256

from .conftest import EXAMPLE_POLICY, make_report, write_report


# ---------------------------------------------------------------- keys
def test_signing_init_writes_private_key_0600(tmp_path):
    files = generate_signing_key(tmp_path / "k" / "signing.key")
    assert stat.S_IMODE(files.private.stat().st_mode) == 0o600
    assert files.public == tmp_path / "k" / "signing.pub"
    assert b"PUBLIC KEY" in files.public.read_bytes()
    key = load_signing_key(files.private)
    assert key.key_id == files.key_id == file_key_id(files.public)
    assert "PRIVATE" not in repr(key) and files.key_id[:16] in repr(key)
    with pytest.raises(SigningKeyError, match=r"already exists: keep it, or pass --force"):
        generate_signing_key(files.private)
    assert generate_signing_key(files.private, force=True).key_id != files.key_id


def file_key_id(pub_path):
    from bastion.gate.keys import key_id

    return key_id(load_public_key(pub_path))


def test_refuses_a_key_readable_by_others(key_pair):
    os.chmod(key_pair.private, 0o640)
    with pytest.raises(
        SigningKeyError, match=r"accessible by group or others \(mode 0640\).*chmod 600"
    ):
        load_signing_key(key_pair.private)


def test_key_from_the_environment(key_pair, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_KEY, key_pair.private.read_text())
    assert load_signing_key().key_id == key_pair.key_id
    monkeypatch.setenv(ENV_KEY, str(key_pair.private))
    assert load_signing_key().source == str(key_pair.private)
    monkeypatch.setenv(ENV_KEY, str(tmp_path / "missing.key"))
    with pytest.raises(SigningKeyError, match=r"\$BASTION_SIGNING_KEY names .*missing.key"):
        load_signing_key()


def test_malformed_key_is_never_echoed(monkeypatch):
    secret = "-----BEGIN PRIVATE KEY-----\nTOPSECRETMATERIAL\n-----END PRIVATE KEY-----"
    monkeypatch.setenv(ENV_KEY, secret)
    with pytest.raises(SigningKeyError) as info:
        load_signing_key()
    assert "TOPSECRET" not in str(info.value) and "not a PEM private key" in str(info.value)


def test_default_location_and_missing_key(monkeypatch, tmp_path):
    monkeypatch.delenv(ENV_KEY, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    with pytest.raises(SigningKeyError, match=r"no signing key: run `bastion keys signing-init`"):
        load_signing_key()
    files = generate_signing_key()
    assert files.private == tmp_path / "cfg" / "bastion" / "signing.key"
    assert load_signing_key().key_id == files.key_id
    assert stat.S_IMODE(files.private.parent.stat().st_mode) == 0o700


def test_wrong_key_types(tmp_path, key_pair):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    ec_key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path / "ec.key"
    path.write_bytes(
        ec_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)
    with pytest.raises(SigningKeyError, match=r"ec.key: the key is \w+, not Ed25519"):
        load_signing_key(path)
    with pytest.raises(SigningKeyError, match=r"holds a private key: verify with the public key"):
        load_public_key(key_pair.private)


# ---------------------------------------------------------------- attestations
@pytest.fixture()
def signed(model_copy, key_pair, tmp_path):
    """An attestation over a model copy, a synthetic report about it and a register."""
    from bastion.risk.register import build_register, save_register
    from bastion.risk.system import load_system

    from .conftest import EXAMPLE_SYSTEM

    report = make_report(
        model_sha=file_sha256(model_copy / "model.safetensors"), model_path=str(model_copy)
    )
    report_path = write_report(report, tmp_path / "assess" / "report.json")
    reg_path = save_register(build_register(load_system(EXAMPLE_SYSTEM)), tmp_path / "reg.json")
    att = create_attestation(
        report_path=report_path,
        policy=load_policy(EXAMPLE_POLICY),
        key=load_signing_key(key_pair.private),
        out=tmp_path / "release" / "att.json",
        register_path=reg_path,
    )
    return att, report_path, load_public_key(key_pair.public)


def test_round_trip(signed, model_copy):
    att, report_path, public = signed
    env = json.loads(att.path.read_text())
    assert env["payloadType"] == PAYLOAD_TYPE and len(env["signatures"]) == 1
    statement = json.loads(base64.b64decode(env["payload"]))
    assert statement["_type"] == STATEMENT_TYPE
    names = {s["name"]: s["digest"]["sha256"] for s in statement["subject"]}
    assert names["model/model.safetensors"] == file_sha256(model_copy / "model.safetensors")
    assert names["report/report.json"] == file_sha256(report_path)
    assert {"model/spec.json", "dataset/manifest.json", "risk/register.json"} <= set(names)
    pred = statement["predicate"]
    assert pred["gate"]["passed"] is False and pred["gate"]["passed"] == att.decision.passed
    assert pred["policy"]["name"] == "digits-release" and len(pred["policy"]["rules"]) == 9
    assert pred["report"]["score"] == 30.0 and pred["report"]["findings"][0]["probe"] == "evasion"
    manifest = json.loads((att.path.parent / "att.dataset-manifest.json").read_text())
    assert manifest["assessed"]["sha256"] == "1" * 64
    result = verify_attestation(att.path, public)
    assert result.ok and result.signature_ok and result.gate_passed is False
    assert all(s.state == "ok" for s in result.subjects)
    strict = verify_attestation(att.path, public, require_pass=True)
    assert strict.problems == ["the recorded gate decision is FAIL (--require-pass)"]


def test_changed_weight_file_is_named(signed, model_copy):
    att, _, public = signed
    with open(model_copy / "model.safetensors", "ab") as f:
        f.write(b"\0")
    result = verify_attestation(att.path, public)
    assert not result.ok and result.signature_ok
    assert len(result.problems) == 1
    assert result.problems[0].startswith("model/model.safetensors changed since signing: sha256 ")
    assert str(model_copy / "model.safetensors") in result.problems[0]


def test_changed_report_and_missing_manifest_are_named(signed):
    att, report_path, public = signed
    report_path.write_text(report_path.read_text().replace('"score": 30.0', '"score": 3.0'))
    (att.path.parent / "att.dataset-manifest.json").unlink()
    problems = verify_attestation(att.path, public).problems
    assert any(p.startswith("report/report.json changed since signing") for p in problems)
    assert any(p.startswith("dataset/manifest.json: file missing") for p in problems)


def test_tampered_statement_fails_the_signature(signed):
    att, _, public = signed
    env = json.loads(att.path.read_text())
    statement = json.loads(base64.b64decode(env["payload"]))
    statement["predicate"]["gate"]["passed"] = True  # forge a PASS
    env["payload"] = base64.b64encode(json.dumps(statement).encode()).decode()
    att.path.write_text(json.dumps(env))
    result = verify_attestation(att.path, public)
    assert not result.signature_ok
    assert any(
        "signature does not match the statement: the statement (payload) or the "
        "signature was altered" in p
        for p in result.problems
    )


def test_tampered_signature_fails(signed):
    att, _, public = signed
    env = json.loads(att.path.read_text())
    sig = bytearray(base64.b64decode(env["signatures"][0]["sig"]))
    sig[0] ^= 1
    env["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    att.path.write_text(json.dumps(env))
    assert not verify_attestation(att.path, public).signature_ok
    env["signatures"][0]["sig"] = "***"
    att.path.write_text(json.dumps(env))
    assert (
        "signature: the signature is not valid base64: it was altered"
        in verify_attestation(att.path, public).problems
    )


def test_other_key_is_named(signed, tmp_path):
    att, _, _ = signed
    other = generate_signing_key(tmp_path / "other" / "k.key")
    result = verify_attestation(att.path, load_public_key(other.public))
    assert result.problems[0].startswith(
        f"signature: no signature by the given key {other.key_id[:16]}"
    )


def test_moved_artifacts_verify_with_overrides(signed, model_copy, tmp_path):
    import shutil

    att, _, public = signed
    moved = tmp_path / "elsewhere"
    shutil.move(str(model_copy), moved)
    assert any("file missing" in p for p in verify_attestation(att.path, public).problems)
    assert verify_attestation(att.path, public, overrides={"model/": moved}).ok


def test_not_an_envelope(tmp_path, key_pair):
    path = tmp_path / "x.json"
    path.write_text('{"hello": 1}')
    with pytest.raises(IntegrityError, match=r"not a DSSE envelope \(needs payloadType, payload"):
        verify_attestation(path, load_public_key(key_pair.public))
    path.write_text("nope")
    with pytest.raises(IntegrityError, match=r"not a DSSE envelope \(invalid JSON"):
        verify_attestation(path, load_public_key(key_pair.public))


def test_report_about_another_model_is_refused(model_copy, key_pair, tmp_path):
    report_path = write_report(make_report(model_path=str(model_copy)), tmp_path / "report.json")
    with pytest.raises(
        ConfigError, match=r"assessed a model with sha256 000000000000…, but .* has sha256"
    ):
        create_attestation(
            report_path=report_path,
            policy=load_policy(EXAMPLE_POLICY),
            key=load_signing_key(key_pair.private),
            out=tmp_path / "a.json",
        )


def test_pae_matches_the_dsse_spec():
    # DSSE protocol.md: "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_attest_a_real_report(real_report, digits_model_dir, key_pair, tmp_path):
    att = create_attestation(
        report_path=real_report,
        policy=load_policy(EXAMPLE_POLICY),
        key=load_signing_key(key_pair.private),
        out=tmp_path / "att.json",
    )
    result = verify_attestation(att.path, load_public_key(key_pair.public))
    assert result.ok, result.problems
    names = {s.name for s in result.subjects}
    assert "model/model.safetensors" in names and "dataset/manifest.json" in names
    manifest = json.loads((tmp_path / "att.dataset-manifest.json").read_text())
    assert manifest["assessed"]["n"] == 450
