"""Metrics, health, OpenAPI, the dashboard, the audit routes, settings and the CLI."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from bastion.audit import leaf_hash, verify_consistency, verify_inclusion
from bastion.cli import build_app
from bastion.errors import ConfigError, StoreError
from bastion.serve.settings import load_settings
from tests.serve.conftest import marked


def test_metrics_are_exposed_per_app(gw, scripted, sample):
    gw.client.post("/v1/predict", json={"inputs": [sample, sample]}, headers=gw.auth())
    gw.client.post("/v1/predict", json={"inputs": [marked(sample, 0.75)]}, headers=gw.auth())
    r = gw.client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    assert 'bastion_requests_total{method="POST",route="/v1/predict",status="200"} 2.0' in text
    assert 'bastion_request_latency_seconds_count{route="/v1/predict"} 2.0' in text
    assert 'bastion_verdicts_total{verdict="allow"} 1.0' in text
    assert 'bastion_verdicts_total{verdict="flag"} 1.0' in text
    assert "bastion_samples_total 3.0" in text
    assert "bastion_drift_p_value 0.5" in text  # from the guard's drift_status
    assert "bastion_audit_commit_seconds_count 2.0" in text
    gw.client.get("/no/such/path")
    assert 'route="other",status="404"' in gw.client.get("/metrics").text


def test_two_apps_do_not_share_metrics(settings, gateway_factory, sample):
    with gateway_factory(settings) as a, gateway_factory(settings) as b:
        a.client.post("/v1/predict", json={"inputs": [sample]}, headers=a.auth())
        assert "bastion_samples_total 1.0" in a.client.get("/metrics").text
        assert "bastion_samples_total 0.0" in b.client.get("/metrics").text


def test_health_and_openapi(gw):
    health = gw.client.get("/healthz").json()
    assert health["status"] == "ok" and health["guard"] is False
    assert health["rate_limit"] == "local" and health["audit"] == "CommitterSink"
    spec = gw.client.get("/openapi.json").json()
    paths = spec["paths"]
    for path in (
        "/v1/predict",
        "/v1/tickets/{ticket}",
        "/v1/reviews",
        "/v1/reviews/{ticket}/approve",
        "/v1/audit/entries",
        "/v1/audit/proof/inclusion",
        "/healthz",
        "/metrics",
    ):
        assert path in paths, path
    body = paths["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    forms = [_ref(spec, s) for s in _ref(spec, body)["anyOf"]]
    assert [set(f["properties"]) for f in forms] == [{"inputs"}, {"b64", "shape"}]
    assert {"202", "401", "413", "422", "429"} <= set(paths["/v1/predict"]["post"]["responses"])


def _ref(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        schema = spec["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    return schema


def test_dashboard_is_self_contained(gw):
    r = gw.client.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")  # a session first
    r = gw.client.get("/login")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    html = r.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # no CDN, nothing remote
    assert "default-src 'none'" in r.headers["content-security-policy"]
    assert 'href="/static/dashboard.css"' in html  # the one stylesheet, served from the package


def test_dashboard_data_routes(gw, scripted, sample):
    gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
    recent = gw.client.get("/v1/decisions", headers=gw.auth("reviewer")).json()
    assert recent[0]["verdict"] == "allow" and recent[0]["key_id"] == gw.ids["client"]
    assert recent[0]["audit_index"] >= 0
    drift = gw.client.get("/v1/guard/drift", headers=gw.auth("reviewer")).json()
    assert drift["p_value"] == 0.5 and drift["alert"] is False


def test_audit_routes_prove_inclusion_and_consistency(gw, sample):
    for _ in range(3):
        gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
    h = gw.auth("reviewer")
    head = gw.client.get("/v1/audit/tree-head", headers=h).json()
    assert head["tree_size"] == 3 and head["signed"] is None
    proof = gw.client.get("/v1/audit/proof/inclusion?index=1", headers=h).json()
    assert proof["entry"]["kind"] == "decision"
    assert verify_inclusion(
        bytes.fromhex(proof["leaf_hash"]),
        1,
        3,
        [bytes.fromhex(p) for p in proof["audit_path"]],
        bytes.fromhex(head["root_hash"]),
    )
    cons = gw.client.get("/v1/audit/proof/consistency?first=2", headers=h).json()
    assert verify_consistency(
        2,
        3,
        bytes.fromhex(cons["first_root"]),
        bytes.fromhex(cons["second_root"]),
        [bytes.fromhex(p) for p in cons["proof"]],
    )
    bad = gw.client.get("/v1/audit/proof/inclusion?index=7", headers=h)
    assert bad.status_code == 404 and "outside" in bad.json()["detail"]
    assert bad.json()["code"] == "not_found"
    assert gw.client.get("/v1/audit/verify", headers=h).status_code == 403
    verdict = gw.client.get("/v1/audit/verify", headers=gw.auth("admin")).json()
    assert verdict["ok"] and verdict["size"] == 3
    assert gw.client.post("/v1/audit/tree-head", headers=gw.auth("admin")).status_code == 409
    entry = gw.state.audit.log.entry_bytes(0)
    assert (
        leaf_hash(entry).hex()
        == gw.client.get("/v1/audit/proof/inclusion?index=0", headers=h).json()["leaf_hash"]
    )


def test_every_acknowledged_request_is_in_the_log(gw, sample):
    ids = [
        gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth()).json()[
            "request_id"
        ]
        for _ in range(5)
    ]
    logged = [
        e["request_id"] for e in gw.state.audit.log.entries(0, 100) if e["kind"] == "decision"
    ]
    assert logged == ids


def test_signed_tree_heads_with_a_key(settings, gateway_factory, sample, tmp_path):
    from bastion.audit.sth import generate_key_file

    key_file = tmp_path / "audit.pem"
    generate_key_file(key_file)
    signed = settings.model_copy(
        update={
            "audit": settings.audit.model_copy(update={"key_file": key_file, "checkpoint_every": 2})
        }
    )
    with gateway_factory(signed) as gw:
        for _ in range(2):
            gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
        head = gw.client.get("/v1/audit/tree-head", headers=gw.auth("reviewer")).json()
        assert head["signed"]["tree_size"] == 2  # signed automatically at the checkpoint
        r = gw.client.post("/v1/audit/tree-head", headers=gw.auth("admin"))
        assert r.status_code == 201 and r.json()["tree_size"] == 2


def test_settings_from_yaml_and_flags(tmp_path):
    cfg = tmp_path / "serve.yaml"
    cfg.write_text("port: 9000\nlimits: {max_batch: 8}\nrate_limit: {requests_per_s: 5}\n")
    s = load_settings(cfg, port=9100, host=None)
    assert s.port == 9100 and s.limits.max_batch == 8 and s.rate_limit.requests_per_s == 5
    assert s.host == "127.0.0.1"
    cfg.write_text("limits: {max_bach: 8}\n")
    with pytest.raises(ConfigError, match=r"serve.yaml: limits.max_bach: unknown key"):
        load_settings(cfg)
    cfg.write_text("- 1\n")
    with pytest.raises(ConfigError, match="expected a mapping of settings"):
        load_settings(cfg)
    with pytest.raises(ConfigError, match="ssl_certfile and ssl_keyfile go together"):
        load_settings(None, ssl_certfile=cfg)
    with pytest.raises(ConfigError, match=r"TLS file not found: /nope/key\.pem"):
        load_settings(None, ssl_certfile=cfg, ssl_keyfile="/nope/key.pem")


def test_example_serve_yaml_is_valid():
    from pathlib import Path

    s = load_settings(Path(__file__).parents[2] / "examples" / "serve.yaml")
    assert s.guard.enabled and s.rate_limit.enabled and s.audit.enabled


def test_serve_without_a_model_is_one_line_error(tmp_path):
    from fastapi.testclient import TestClient

    from bastion.serve.app import create_app

    app = create_app(load_settings(None, db_url=f"sqlite:///{tmp_path / 'x.db'}"))
    with pytest.raises(ConfigError, match="no model to serve: pass --model DIR"), TestClient(app):
        pass


def test_keys_cli_create_list_revoke(tmp_path):
    runner = CliRunner()
    app = build_app()
    db = f"sqlite:///{tmp_path / 'keys.db'}"
    r = runner.invoke(app, ["keys", "create", "--role", "reviewer", "--name", "bob", "--db", db])
    assert r.exit_code == 0, r.output
    secret = r.output.strip().splitlines()[-1]
    assert secret.startswith("bst_") and r.output.count(secret) == 1
    listed = runner.invoke(app, ["keys", "list", "--db", db])
    assert "reviewer" in listed.output and "bob" in listed.output and secret not in listed.output
    assert runner.invoke(app, ["keys", "revoke", "1", "--db", db]).exit_code == 0
    missing = runner.invoke(app, ["keys", "revoke", "7", "--db", db])
    assert isinstance(missing.exception, StoreError) and "no API key with id 7" in str(
        missing.exception
    )
    bad = runner.invoke(app, ["keys", "create", "--role", "root", "--db", db])
    assert isinstance(bad.exception, ConfigError)
    from bastion.audit import AuditLog

    with AuditLog.open(db) as log:
        actions = [(e["kind"], e["action"]) for e in log.entries(0, 10)]
    assert actions == [("key", "create"), ("key", "revoke")]


def test_demo_stage_prints_serve_and_curl(digits, digits_model_dir, tmp_path, capsys):
    from bastion.cli.demo import DemoContext
    from bastion.cli.serve import demo_stage

    ctx = DemoContext(out=tmp_path, data=digits, model_dir=digits_model_dir)
    demo_stage(ctx)
    out = capsys.readouterr().out
    assert "bastion serve --model" in out and "curl" in out and "/v1/predict" in out
    readme = (tmp_path / "serve" / "README.txt").read_text()
    key = re.search(r"Bearer (bst_[\w-]+)", readme).group(1)
    from bastion.store.db import make_engine
    from bastion.store.keys import lookup_key

    engine = make_engine(f"sqlite:///{(tmp_path / 'serve' / 'serve.db').resolve()}")
    assert lookup_key(engine, key).role == "client"
    engine.dispose()
    assert ctx.summary[-1][0] == "serve"
