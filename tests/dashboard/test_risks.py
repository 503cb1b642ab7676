"""The risk register in the gateway: the API (reviewers read, admins edit, audited, history
kept) and the dashboard pages (heat map, RPN, edits admin-only: 403 for a reviewer)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bastion.risk.register import build_register, load_register, save_register
from bastion.risk.system import load_system
from tests.dashboard.conftest import login

EXAMPLE = Path(__file__).parents[2] / "src" / "bastion" / "risk" / "examples" / "system.yaml"


@pytest.fixture()
def register_file(tmp_path) -> Path:
    return save_register(build_register(load_system(EXAMPLE)), tmp_path / "register.json")


@pytest.fixture()
def rgw(settings, gateway_factory, register_file):
    with gateway_factory(settings.model_copy(update={"risk_register": register_file})) as g:
        yield g


def test_api_reads_for_reviewers_and_edits_for_admins(rgw, register_file):
    risks = rgw.client.get("/v1/risks", headers=rgw.auth("reviewer"))
    assert risks.status_code == 200 and risks.json()[0]["id"] == "EVA-01"
    assert {"rpn", "priority", "likelihood", "impact", "level"} <= set(risks.json()[0])
    edit = {"owner": "security team"}
    denied = rgw.client.patch("/v1/risks/EVA-01", json=edit, headers=rgw.auth("reviewer"))
    assert denied.status_code == 403
    assert rgw.client.get("/v1/risks", headers=rgw.auth("client")).status_code == 403
    r = rgw.client.patch("/v1/risks/EVA-01", json=edit, headers=rgw.auth("admin"))
    assert r.status_code == 200 and r.json()["owner"] == "security team"
    assert r.json()["history"][-1]["by"] == f"key {rgw.ids['admin']} (test admin)"
    assert load_register(register_file).get("EVA-01").owner == "security team"
    bad = rgw.client.patch(
        "/v1/risks/EVA-01", json={"status": "accepted"}, headers=rgw.auth("admin")
    )
    assert bad.status_code == 422 and "needs a reason" in bad.json()["detail"]
    missing = rgw.client.patch("/v1/risks/NOPE-1", json=edit, headers=rgw.auth("admin"))
    assert missing.status_code == 404
    entries = rgw.client.get("/v1/audit/entries", headers=rgw.auth("admin")).json()
    assert [e["entry"]["kind"] for e in entries] == ["risk"]
    assert entries[0]["entry"]["changes"] == {"owner": "security team"}


def test_api_without_a_register_is_404(gw):
    r = gw.client.get("/v1/risks", headers=gw.auth("reviewer"))
    assert r.status_code == 404 and "no risk register is configured" in r.json()["detail"]


def test_pages_show_the_heat_map_and_only_admins_edit(rgw, register_file):
    csrf = login(rgw, "reviewer")
    high = sum(
        r.priority == "high" and r.status == "open" for r in load_register(register_file).risks
    )
    assert f'id="high-risks"><a href="/risks">{high}<' in rgw.client.get("/").text
    page = rgw.client.get("/risks").text
    assert 'id="heat-map"' in page and 'href="/risks/EVA-01"' in page
    assert 'id="risk-EVA-01"' in page and "read-only" in page
    detail = rgw.client.get("/risks/EVA-01").text
    assert 'id="read-only"' in detail and 'action="/risks/EVA-01/edit"' not in detail
    denied = rgw.client.post(
        "/risks/EVA-01/edit", data={"csrf_token": csrf, "what": "owner", "owner": "me"}
    )
    assert denied.status_code == 403 and "needs the role admin" in denied.text
    assert load_register(register_file).get("EVA-01").owner == "ml-team"

    rgw.client.cookies.clear()
    csrf = login(rgw, "admin")
    form = {"csrf_token": csrf, "what": "status", "status": "accepted", "reason": ""}
    refused = rgw.client.post("/risks/EVA-01/edit", data=form)
    assert refused.status_code == 422 and "needs a reason" in refused.text
    form["reason"] = "residual risk signed off by the CISO"
    r = rgw.client.post("/risks/EVA-01/edit", data=form, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/risks/EVA-01?done=1"
    form = {"csrf_token": csrf, "what": "control", "control_id": "AML.M0003", "state": "verified"}
    assert rgw.client.post("/risks/EVA-01/edit", data=form).status_code == 200
    detail = rgw.client.get("/risks/EVA-01").text
    assert 'id="status">accepted<' in detail and "residual risk signed off by the CISO" in detail
    history = detail.split('id="history"')[1]
    assert "control AML.M0003 → verified" in history and "test admin" in history
    risk = load_register(register_file).get("EVA-01")
    assert risk.status == "accepted" and risk.controls[0].state == "verified"
    assert rgw.client.get("/risks/NOPE-1").status_code == 404
    bad = rgw.client.post("/risks/EVA-01/edit", data={"csrf_token": csrf, "what": "owner"})
    assert bad.status_code == 400


def test_pages_without_a_register_say_so(gw):
    login(gw, "reviewer")
    assert 'id="high-risks"' not in gw.client.get("/").text
    page = gw.client.get("/risks")
    assert page.status_code == 200 and "no risk register is configured" in page.text
