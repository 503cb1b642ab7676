"""End to end: one real `bastion serve` process (uvicorn, TLS, a fitted guard) on loopback."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import pytest

from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.ports import free_port


def _self_signed(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture()
def guarded_model(digits, digits_model_dir, tmp_path):
    """A copy of the digits model with a quickly fitted guard beside it."""
    from bastion.guard.config import GuardConfig
    from bastion.guard.guard import fit_guard
    from bastion.models.io import load_model

    model_dir = tmp_path / "model"
    shutil.copytree(digits_model_dir, model_dir)
    loaded = load_model(model_dir)
    config = GuardConfig.model_validate({"detectors": {"reconstruction": {"epochs": 3}}})
    fit_guard(loaded.module, digits.train, config=config).save(model_dir)
    return model_dir


def test_real_server_over_tls_with_guard(guarded_model, digits, tmp_path):
    cert, key = _self_signed(tmp_path)
    db = f"sqlite:///{tmp_path / 'e2e.db'}"
    engine = make_engine(db)
    _, client_key = create_key(engine, "client")
    _, reviewer_key = create_key(engine, "reviewer")
    engine.dispose()
    port = free_port()
    cmd = [
        sys.executable,
        "-m",
        "bastion.cli",
        "serve",
        "--model",
        str(guarded_model),
        "--db",
        db,
        "--port",
        str(port),
        "--ssl-certfile",
        str(cert),
        "--ssl-keyfile",
        str(key),
        "--log-level",
        "warning",
    ]
    env = {**os.environ, "BASTION_LOG": "WARNING"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    base = f"https://localhost:{port}"
    try:
        with httpx.Client(base_url=base, verify=str(cert), timeout=10) as http:
            deadline = time.monotonic() + 60
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"server exited: {proc.stdout.read().decode()[-2000:]}")
                try:
                    health = http.get("/healthz").json()
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            assert health["guard"] is True and health["audit"] == "CommitterSink"
            with pytest.raises(httpx.TransportError):  # plain HTTP is not served on a TLS port
                httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)

            auth = {"Authorization": f"Bearer {client_key}"}
            x = digits.test.x[:3]
            r = http.post("/v1/predict", json={"inputs": x.tolist()}, headers=auth)
            assert r.status_code in (200, 202), r.text
            if r.status_code == 200:
                body = r.json()
                assert len(body["predictions"]) == 3
                assert (
                    sum(
                        p == int(y)
                        for p, y in zip(body["predictions"], digits.test.y[:3], strict=True)
                    )
                    >= 2
                )
                assert set(body["verdicts"]) <= {"allow", "flag"}
            bad = x[:1].clone()
            bad[0, 0, 0, 0] = float("nan")
            nan_body = json.dumps({"inputs": bad.tolist()})  # the stdlib writes NaN
            json_auth = {**auth, "Content-Type": "application/json"}
            r = http.post("/v1/predict", content=nan_body, headers=json_auth)
            assert r.status_code == 422 and "NaN" in r.json()["detail"]
            assert http.post("/v1/predict", json={"inputs": x.tolist()}).status_code == 401
            logged = http.get("/v1/audit/entries", headers={"X-API-Key": reviewer_key}).json()
            assert logged[0]["entry"]["kind"] == "decision" and logged[0]["entry"]["n"] == 3
            assert set(logged[0]["entry"]["scores"][0]) >= {"mahalanobis", "squeeze"}
            metrics = http.get("/metrics").text
            assert "bastion_drift_p_value" in metrics and "bastion_samples_total 3.0" in metrics
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stdout.read().decode()[-2000:]
