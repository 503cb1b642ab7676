"""Blocked clients: the guard's block verdict blocks the key; the block is audited, visible
and reversible (admin API, CLI), lapses after blocks.expire_after_s, and the refusal names
no detector internals."""

from __future__ import annotations

import re
import sys
import uuid
from datetime import UTC, datetime, timedelta

import pytest
import torch
from typer.testing import CliRunner

from bastion.cli import build_app, main
from bastion.store.blocks import block_client, get_block, list_blocks, unblock_client
from bastion.store.db import make_engine
from bastion.store.keys import create_key
from tests.serve.conftest import ScriptedGuard, marked

# What the guard says about a blocked request: detector names, scores and thresholds that
# the client must never see.
REASONS = [
    "mahalanobis 41.2 is extreme (> 3 × 7.718)",
    "extraction: PRADA Shapiro-Wilk W 0.8123 < delta 0.9402",
]
SECRETS = ("mahalanobis", "extraction", "PRADA", "threshold", "delta", "41.2", "7.718", "0.9402")


class BlockingGuard(ScriptedGuard):
    """The scripted guard (first pixel 0.5 → block), with detector-like reasons for the
    block and the per-client reset of a real guard."""

    def __init__(self, module: torch.nn.Module) -> None:
        super().__init__(module)
        self.resets: list[str] = []

    def predict_and_inspect(self, x: torch.Tensor, client_id: str) -> tuple[torch.Tensor, list]:
        from bastion.guard.verdict import GuardVerdict

        logits, verdicts = super().predict_and_inspect(x, client_id)
        out = [
            GuardVerdict(verdict="block", scores={"mahalanobis": 41.2}, reasons=REASONS)
            if v.verdict == "block"
            else v
            for v in verdicts
        ]
        return logits, out

    def reset_client(self, client_id: str) -> None:
        self.resets.append(client_id)


@pytest.fixture()
def blocking(gw) -> BlockingGuard:
    guard = BlockingGuard(gw.state.runtime.module)
    gw.state.runtime.guard = guard
    return guard


def _entries(gw) -> list[dict]:
    return list(gw.state.audit.log.entries(0, 10_000))


def _predict(gw, sample, role="client"):
    return gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth(role))


def _assert_policy_refusal(r, *, blocked_until) -> str:
    assert r.status_code == 403, r.text
    body = r.json()
    assert set(body) == {"detail", "code", "request_id", "blocked_until"}
    assert body["code"] == "blocked"
    assert body["detail"].startswith("request blocked by policy; contact the service operator")
    assert body["request_id"] in body["detail"]
    for word in SECRETS:
        assert word not in r.text, word
    assert body["blocked_until"] == blocked_until
    return body["request_id"]


def test_guard_block_blocks_the_client_until_an_admin_unblocks(gw, blocking, sample):
    cid = gw.ids["client"]
    before = datetime.now(UTC)
    first = _predict(gw, marked(sample, 0.5))
    assert first.status_code == 403
    until = datetime.fromisoformat(first.json()["blocked_until"])
    assert before + timedelta(seconds=3590) < until < datetime.now(UTC) + timedelta(seconds=3601)
    first_id = _assert_policy_refusal(first, blocked_until=first.json()["blocked_until"])

    # From now on every request of this client is refused, whatever it sends ...
    later = _predict(gw, sample)
    later_id = _assert_policy_refusal(later, blocked_until=first.json()["blocked_until"])
    assert later_id != first_id
    assert blocking.calls == [str(cid)]  # ... without reaching the model or the guard
    # ... polling included; another client is not affected.
    poll = gw.client.get("/v1/tickets/nope", headers=gw.auth())
    _assert_policy_refusal(poll, blocked_until=first.json()["blocked_until"])
    assert _predict(gw, sample, "client2").status_code == 200

    entries = _entries(gw)
    decision = next(e for e in entries if e.get("request_id") == first_id)
    assert decision["kind"] == "decision" and decision["verdict"] == "block"
    assert decision["block"]["reasons"] == REASONS and decision["block"]["created"] is True
    refused = [e for e in entries if e["kind"] == "refused"]
    assert len(refused) == 2 and refused[0]["request_id"] == later_id
    assert all(
        e["key_id"] == cid and e["block_id"] == decision["block"]["block_id"] for e in refused
    )

    # The admin sees why; reviewers and clients may not look.
    shown = gw.client.get(f"/v1/clients/{cid}/block", headers=gw.auth("admin"))
    assert shown.status_code == 200, shown.text
    block = shown.json()
    assert block["client_id"] == cid and block["reasons"] == REASONS
    assert block["reason"] == "; ".join(REASONS) and block["request_id"] == first_id
    assert block["created_by"] == "guard" and block["removed"] is None
    assert datetime.fromisoformat(block["expires"]) == until
    for role in ("client", "reviewer"):
        r = gw.client.get(f"/v1/clients/{cid}/block", headers=gw.auth(role))
        assert r.status_code == 403 and "needs a key with role admin" in r.json()["detail"]
        assert (
            gw.client.delete(f"/v1/clients/{cid}/block", headers=gw.auth(role)).status_code == 403
        )
    listed = gw.client.get("/v1/clients/blocked", headers=gw.auth("admin")).json()
    assert [b["client_id"] for b in listed] == [cid]

    # Unblock: audited with who did it, the guard forgets the client, the next request passes.
    gone = gw.client.delete(f"/v1/clients/{cid}/block", headers=gw.auth("admin"))
    assert gone.status_code == 200, gone.text
    assert gone.json()["removed_by"] == f"key {gw.ids['admin']}" and gone.json()["removed"]
    assert blocking.resets == [str(cid)]
    removal = _entries(gw)[-1]
    assert removal["kind"] == "block" and removal["action"] == "remove"
    assert removal["client_key_id"] == cid and removal["by_key_id"] == gw.ids["admin"]
    ok = _predict(gw, sample)
    assert ok.status_code == 200 and ok.json()["verdicts"] == ["allow"]

    missing = gw.client.get(f"/v1/clients/{cid}/block", headers=gw.auth("admin"))
    assert missing.status_code == 404 and missing.json()["detail"] == f"client {cid} is not blocked"
    again = gw.client.delete(f"/v1/clients/{cid}/block", headers=gw.auth("admin"))
    assert again.status_code == 404
    unknown = gw.client.get("/v1/clients/999/block", headers=gw.auth("admin"))
    assert unknown.status_code == 404 and unknown.json()["detail"] == "no API key 999"
    assert gw.client.get("/v1/clients/blocked", headers=gw.auth("admin")).json() == []
    recent = gw.client.get("/v1/decisions", headers=gw.auth("reviewer")).json()
    assert [d["blocked"] for d in recent if d["key_id"] == cid] == [False, True]


def test_a_block_lapses_after_expire_after_s(settings, gateway_factory, sample):
    quick = settings.model_copy(
        update={"blocks": settings.blocks.model_copy(update={"expire_after_s": 60.0})}
    )
    with gateway_factory(quick) as gw:
        gw.state.runtime.guard = BlockingGuard(gw.state.runtime.module)
        cid = gw.ids["client"]
        assert _predict(gw, marked(sample, 0.5)).status_code == 403
        block = gw.client.get(f"/v1/clients/{cid}/block", headers=gw.auth("admin")).json()
        created, expires = (datetime.fromisoformat(block[k]) for k in ("created", "expires"))
        assert expires - created == timedelta(seconds=60)
        assert _predict(gw, sample).status_code == 403

        real = gw.state.blocks.clock
        gw.state.blocks.clock = lambda: real() + timedelta(seconds=59)
        assert _predict(gw, sample).status_code == 403  # not yet
        gw.state.blocks.clock = lambda: real() + timedelta(seconds=61)
        assert _predict(gw, sample).status_code == 200  # lapsed: behaves as absent
        r = gw.client.get(f"/v1/clients/{cid}/block", headers=gw.auth("admin"))
        assert r.status_code == 404
        assert gw.client.get("/v1/clients/blocked", headers=gw.auth("admin")).json() == []
        assert (
            gw.client.delete(f"/v1/clients/{cid}/block", headers=gw.auth("admin")).status_code
            == 404
        )


def test_admin_blocks_by_hand_with_reason_and_expiry(gw, sample):
    cid = gw.ids["client2"]
    r = gw.client.put(
        f"/v1/clients/{cid}/block",
        json={"reason": "abuse report #12", "expire_after_s": 120},
        headers=gw.auth("admin"),
    )
    assert r.status_code == 200, r.text
    block = r.json()
    assert block["reasons"] == ["abuse report #12"] and block["request_id"] is None
    assert block["created_by"] == f"key {gw.ids['admin']}"
    refused = _predict(gw, sample, "client2")
    _assert_policy_refusal(refused, blocked_until=block["expires"])
    assert _predict(gw, sample).status_code == 200  # the other client

    # A second PUT replaces the block; permanent means no expiry.
    r2 = gw.client.put(
        f"/v1/clients/{cid}/block",
        json={"reason": "still abusive", "permanent": True},
        headers=gw.auth("admin"),
    )
    assert r2.status_code == 200 and r2.json()["expires"] is None
    assert r2.json()["block_id"] != block["block_id"]
    assert _predict(gw, sample, "client2").json()["blocked_until"] is None
    created = [e for e in _entries(gw) if e["kind"] == "block"]
    assert [(e["action"], e["reasons"], e["by_key_id"]) for e in created] == [
        ("create", ["abuse report #12"], gw.ids["admin"]),
        ("create", ["still abusive"], gw.ids["admin"]),
    ]

    bad = [
        (f"/v1/clients/{cid}/block", {"reason": ""}, 422),
        (f"/v1/clients/{cid}/block", {"reason": "x", "expire_after_s": -1}, 422),
        ("/v1/clients/abc/block", {"reason": "x"}, 422),
        ("/v1/clients/999/block", {"reason": "x"}, 404),
    ]
    for path, body, code in bad:
        assert gw.client.put(path, json=body, headers=gw.auth("admin")).status_code == code
    assert (
        gw.client.put(
            f"/v1/clients/{cid}/block", json={"reason": "x"}, headers=gw.auth("client")
        ).status_code
        == 403
    )


def test_reviewers_still_work_while_a_client_is_blocked(gw, blocking, sample):
    held = gw.client.post(
        "/v1/predict", json={"inputs": [marked(sample, 0.25)]}, headers=gw.auth()
    ).json()
    assert held["status"] == "held"
    assert _predict(gw, marked(sample, 0.5)).status_code == 403
    assert gw.client.get(f"/v1/tickets/{held['ticket']}", headers=gw.auth()).status_code == 403
    # the reviewer decides the held ticket; admins and reviewers are never refused as clients
    ok = gw.client.post(f"/v1/reviews/{held['ticket']}/approve", headers=gw.auth("reviewer"))
    assert ok.status_code == 200
    assert (
        gw.client.get(f"/v1/tickets/{held['ticket']}", headers=gw.auth("admin")).status_code == 200
    )


def test_cli_unblock_reaches_a_running_gateway(gw, blocking, sample):
    assert _predict(gw, marked(sample, 0.5)).status_code == 403
    db = gw.state.settings.db_url
    listed = CliRunner().invoke(build_app(), ["clients", "blocked", "--db", db])
    assert listed.exit_code == 0, listed.output
    assert "1 blocked client" in listed.output and "guard" in listed.output
    r = CliRunner().invoke(build_app(), ["clients", "unblock", str(gw.ids["client"]), "--db", db])
    assert r.exit_code == 0, r.output
    assert f"unblocked client {gw.ids['client']}" in r.output
    assert _predict(gw, sample).status_code == 200  # auth.cache_ttl_s is 0 in these tests
    removal = [e for e in _entries(gw) if e["kind"] == "block"]
    assert [(e["action"], e["by"]) for e in removal] == [("remove", "cli")]


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["bastion", *args])
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_clients_cli(tmp_path, monkeypatch, capsys):
    db = f"sqlite:///{tmp_path / 'c.db'}"
    engine = make_engine(db)
    info, _ = create_key(engine, "client", "alice")
    engine.dispose()
    cid = str(info.id)

    code, out, _ = _main(monkeypatch, capsys, "clients", "blocked", "--db", db)
    assert code == 0 and "no blocked clients" in out
    code, out, _ = _main(monkeypatch, capsys, "clients", "show", cid, "--db", db)
    assert code == 0 and f"client {cid} (client key 'alice') is not blocked" in out

    code, out, _ = _main(
        monkeypatch,
        capsys,
        "clients",
        "block",
        cid,
        "--reason",
        "too many",
        "--expire-after",
        "600",
        "--db",
        db,
    )
    assert code == 0 and f"blocked client {cid}" in out
    code, out, _ = _main(monkeypatch, capsys, "clients", "show", cid, "--db", db)
    assert code == 0 and "is BLOCKED" in out and "too many" in out and "by cli" in out
    code, out, _ = _main(monkeypatch, capsys, "clients", "blocked", "--db", db)
    assert code == 0 and "too many" in out and "1 blocked client" in out

    code, out, _ = _main(monkeypatch, capsys, "clients", "unblock", cid, "--db", db)
    assert code == 0 and f"unblocked client {cid}" in out and "too many" in out
    from bastion.audit import AuditLog

    with AuditLog.open(db) as log:
        actions = [(e["kind"], e["action"], e["by"]) for e in log.entries(0, 10)]
    assert actions == [("block", "create", "cli"), ("block", "remove", "cli")]

    for args, message in [
        (["unblock", cid], f"client {cid} is not blocked"),
        (["unblock", "99"], "no API key with id 99"),
        (["show", "99"], "no API key with id 99"),
        (["block", "99", "--reason", "x"], "no API key with id 99"),
        (["block", cid, "--reason", " "], "--reason must say why"),
        (["block", cid, "--reason", "x", "--expire-after", "0"], "--expire-after must be"),
        (["blocked", "--db", "nonsense://x"], "cannot use database URL"),
        (["blocked", "--db", "postgresql://x@127.0.0.1:1/x"], "cannot open database"),
    ]:
        full = ["clients", *args] + ([] if "--db" in args else ["--db", db])
        code, out, err = _main(monkeypatch, capsys, *full)
        assert code == 2, (args, out, err)
        assert message in err.replace("\n", " ") and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


def _store_roundtrip(engine) -> None:
    """The block store's contract on one engine (SQLite or PostgreSQL)."""
    now = datetime.now(UTC)
    first, created = block_client(
        engine,
        7,
        reasons=["a", "b"],
        created_by="guard",
        request_id="r1",
        expires=now + timedelta(seconds=60),
        now=now,
    )
    assert created and first.reasons == ["a", "b"] and first.expires.tzinfo is not None
    same, created = block_client(engine, 7, reasons=["c"], created_by="guard", now=now)
    assert not created and same.id == first.id  # one block per client
    assert get_block(engine, 7, now=now).id == first.id
    assert get_block(engine, 7, now=now + timedelta(seconds=61)) is None  # lapsed
    assert [b.client_id for b in list_blocks(engine, now=now)] == [7]
    assert list_blocks(engine, now=now + timedelta(seconds=61)) == []
    other, _ = block_client(engine, 8, reasons=["x"], created_by="key 1", now=now)
    assert other.expires is None
    replaced, created = block_client(
        engine, 8, reasons=["y"], created_by="key 1", replace=True, now=now + timedelta(seconds=1)
    )
    assert created and replaced.id != other.id
    assert [b.reasons for b in list_blocks(engine, now=now + timedelta(seconds=2))] == [
        ["y"],
        ["a", "b"],
    ]
    removed = unblock_client(engine, 8, removed_by="key 1", now=now + timedelta(seconds=3))
    assert removed.id == replaced.id and removed.removed is not None
    assert get_block(engine, 8) is None
    with pytest.raises(Exception, match="client 8 is not blocked"):
        unblock_client(engine, 8, removed_by="key 1")
    with pytest.raises(Exception, match="must expire after"):
        block_client(engine, 9, reasons=["z"], created_by="cli", expires=now - timedelta(1))


def test_block_store_sqlite(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'b.db'}")
    _store_roundtrip(engine)
    engine.dispose()


@pytest.mark.postgres
def test_block_store_postgres():
    from tests.services import PG_URL, pg_unreachable

    reason = pg_unreachable()
    if reason:
        pytest.skip(reason)
    import psycopg

    from bastion.store.db import Base

    schema = f"bastion_blocks_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    base = make_engine(PG_URL, create=False)
    engine = base.execution_options(schema_translate_map={None: schema})
    try:
        Base.metadata.create_all(engine)
        _store_roundtrip(engine)
    finally:
        base.dispose()
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_dashboard_lists_blocked_clients_for_admins(gw):
    """The clients page lists blocks (tests/dashboard covers unblocking and the roles)."""
    cid = gw.ids["client"]
    r = gw.client.put(
        f"/v1/clients/{cid}/block",
        json={"reason": "by hand"},
        headers=gw.auth("admin"),
    )
    assert r.status_code == 200
    form = gw.client.get("/login").text
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', form).group(1)
    gw.client.post("/login", data={"key": gw.keys["admin"], "csrf_token": csrf})
    html = gw.client.get("/clients").text
    assert "Blocked clients" in html and "lapse after 3600 s" in html
    assert "by hand" in html and f'action="/clients/{cid}/unblock"' in html


def test_blocks_made_here_apply_at_once_despite_the_cache(settings, gateway_factory, sample):
    cached = settings.model_copy(
        update={"auth": settings.auth.model_copy(update={"cache_ttl_s": 60.0})}
    )
    with gateway_factory(cached) as gw:
        gw.state.runtime.guard = BlockingGuard(gw.state.runtime.module)
        cid, admin = gw.ids["client"], gw.auth("admin")
        assert _predict(gw, sample).status_code == 200  # the (empty) block list is now cached
        assert _predict(gw, marked(sample, 0.5)).status_code == 403
        assert _predict(gw, sample).status_code == 403
        assert gw.client.delete(f"/v1/clients/{cid}/block", headers=admin).status_code == 200
        assert _predict(gw, sample).status_code == 200
        r = gw.client.put(f"/v1/clients/{cid}/block", json={"reason": "x"}, headers=admin)
        assert r.status_code == 200
        assert _predict(gw, sample).status_code == 403
