"""Authentication and roles: missing, wrong, revoked and wrong-role keys answer 401/403,
never 500; keys are stored hashed; dependency overrides replace the caller."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bastion.errors import ConfigError, StoreError
from bastion.serve.auth import current_key
from bastion.store.db import make_engine, session_factory
from bastion.store.keys import ApiKey, KeyInfo, create_key, list_keys, lookup_key, revoke_key


def test_missing_key_is_401_with_challenge(gw, sample):
    r = gw.client.post("/v1/predict", json={"inputs": [sample]})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert "missing API key" in r.json()["detail"]


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Bearer bst_not-a-real-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"Authorization": "Bearer \u00e9\u00e9".encode()},
        {"X-API-Key": "x" * 5000},
    ],
)
def test_wrong_key_is_401(gw, sample, headers):
    r = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=headers)
    assert r.status_code == 401, r.text


def test_x_api_key_header_works(gw, sample):
    r = gw.client.post(
        "/v1/predict", json={"inputs": [sample]}, headers={"X-API-Key": gw.keys["client"]}
    )
    assert r.status_code == 200, r.text


def test_revoked_key_is_401(gw, sample):
    assert (
        gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth()).status_code
        == 200
    )
    revoke_key(gw.state.engine, gw.ids["client"])  # from outside (the CLI), cache TTL is 0
    r = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
    assert r.status_code == 401
    assert "revoked" in r.json()["detail"]


def test_revoke_through_the_api_takes_effect_at_once(settings, gateway_factory, sample):
    cached = settings.model_copy(
        update={"auth": settings.auth.model_copy(update={"cache_ttl_s": 60})}
    )
    with gateway_factory(cached) as gw:
        ok = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
        assert ok.status_code == 200  # now cached for 60 s
        r = gw.client.post(f"/v1/keys/{gw.ids['client']}/revoke", headers=gw.auth("admin"))
        assert r.status_code == 200 and r.json()["revoked"]
        again = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
        assert again.status_code == 401


@pytest.mark.parametrize(
    ("method", "path", "role"),
    [
        ("post", "/v1/predict", "reviewer"),
        ("get", "/v1/reviews", "client"),
        ("post", "/v1/reviews/abc/approve", "client"),
        ("get", "/v1/audit/entries", "client"),
        ("get", "/v1/keys", "client"),
        ("get", "/v1/keys", "reviewer"),
        ("get", "/v1/decisions", "client"),
    ],
)
def test_wrong_role_is_403(gw, sample, method, path, role):
    kwargs = {"json": {"inputs": [sample]}} if method == "post" else {}
    r = getattr(gw.client, method)(path, headers=gw.auth(role), **kwargs)
    assert r.status_code == 403, r.text
    assert "needs a key with role" in r.json()["detail"]


def test_auth_failures_are_counted(gw):
    gw.client.get("/v1/reviews")
    gw.client.get("/v1/reviews", headers=gw.auth("client"))
    text = gw.client.get("/metrics").text
    assert 'bastion_auth_failures_total{reason="missing"} 1.0' in text
    assert 'bastion_auth_failures_total{reason="role"} 1.0' in text


def test_admin_creates_and_lists_keys_without_secrets(gw):
    r = gw.client.post(
        "/v1/keys", json={"role": "reviewer", "name": "alice"}, headers=gw.auth("admin")
    )
    assert r.status_code == 201
    secret = r.json()["key"]
    assert secret.startswith("bst_")
    listed = gw.client.get("/v1/keys", headers=gw.auth("admin")).json()
    assert any(k["name"] == "alice" and k["role"] == "reviewer" for k in listed)
    assert secret not in str(listed)
    assert (
        gw.client.get("/v1/reviews", headers={"Authorization": f"Bearer {secret}"}).status_code
        == 200
    )
    bad = gw.client.post("/v1/keys", json={"role": "root"}, headers=gw.auth("admin"))
    assert bad.status_code == 422
    assert gw.client.post("/v1/keys/999/revoke", headers=gw.auth("admin")).status_code == 404


def test_dependency_override_replaces_the_caller(gw):
    fake = KeyInfo(
        id=42,
        name="override",
        role="reviewer",
        prefix="",
        created=list_keys(gw.state.engine)[0].created,
    )
    gw.app.dependency_overrides[current_key] = lambda: fake
    try:
        assert gw.client.get("/v1/reviews").status_code == 200  # no header needed
        assert gw.client.get("/v1/keys").status_code == 403  # the role still applies
    finally:
        gw.app.dependency_overrides.clear()


def test_keys_are_stored_hashed(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'k.db'}")
    info, secret = create_key(engine, "client", "c")
    with session_factory(engine)() as session:
        row = session.scalars(select(ApiKey)).one()
    assert secret not in (row.key_sha256, row.prefix, row.name)
    assert len(row.key_sha256) == 64
    assert lookup_key(engine, secret).id == info.id
    assert lookup_key(engine, secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None
    assert lookup_key(engine, "no-prefix") is None
    assert create_key(engine, "client")[1] != secret
    with pytest.raises(
        ConfigError, match="unknown role 'root': choose one of client, reviewer, admin"
    ):
        create_key(engine, "root")
    with pytest.raises(StoreError, match="no API key with id 99"):
        revoke_key(engine, 99)
    assert revoke_key(engine, info.id).revoked is not None
    assert not lookup_key(engine, secret).active
