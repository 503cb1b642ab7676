"""The human review queue: hold → approve → answer, reject, block, escalation, audit."""

from __future__ import annotations

import asyncio
import time

from tests.serve.conftest import marked


def _audit_kinds(gw) -> list[dict]:
    r = gw.client.get("/v1/audit/entries?limit=1000", headers=gw.auth("reviewer"))
    assert r.status_code == 200
    return [e["entry"] for e in r.json()]


def test_hold_approve_answer_cycle(gw, scripted, sample):
    held = gw.client.post(
        "/v1/predict", json={"inputs": [sample, marked(sample, 0.25)]}, headers=gw.auth()
    )
    assert held.status_code == 202, held.text
    body = held.json()
    assert body["status"] == "held" and body["poll"] == f"/v1/tickets/{body['ticket']}"
    assert "predictions" not in body  # withheld until a reviewer approves
    ticket = body["ticket"]

    poll = gw.client.get(f"/v1/tickets/{ticket}", headers=gw.auth())
    assert poll.json()["status"] == "held" and "predictions" not in poll.json()
    assert gw.client.get(f"/v1/tickets/{ticket}", headers=gw.auth("client2")).status_code == 404

    queue = gw.client.get("/v1/reviews", headers=gw.auth("reviewer")).json()
    assert [t["ticket"] for t in queue] == [ticket]
    assert queue[0]["verdicts"][1]["reasons"] == ["scripted hold"]
    assert queue[0]["client_key_id"] == gw.ids["client"]

    ok = gw.client.post(
        f"/v1/reviews/{ticket}/approve", json={"note": "looks fine"}, headers=gw.auth("reviewer")
    )
    assert ok.status_code == 200 and ok.json()["status"] == "approved"
    again = gw.client.post(f"/v1/reviews/{ticket}/reject", headers=gw.auth("reviewer"))
    assert again.status_code == 409 and "already approved" in again.json()["detail"]

    answer = gw.client.get(f"/v1/tickets/{ticket}", headers=gw.auth()).json()
    assert answer["status"] == "approved"
    assert len(answer["predictions"]) == 2 and len(answer["probabilities"]) == 2
    assert answer["verdicts"] == ["allow", "hold"]
    assert gw.client.get("/v1/reviews", headers=gw.auth("reviewer")).json() == []

    kinds = [(e["kind"], e.get("verdict") or e.get("action")) for e in _audit_kinds(gw)]
    assert kinds == [("decision", "hold"), ("review", "approved")]
    text = gw.client.get("/metrics").text
    assert "bastion_holds_total 1.0" in text and "bastion_holds_pending 0.0" in text
    assert 'bastion_verdicts_total{verdict="hold"} 1.0' in text


def test_rejected_ticket_never_gives_the_answer(gw, scripted, sample):
    ticket = gw.client.post(
        "/v1/predict", json={"inputs": [marked(sample, 0.25)]}, headers=gw.auth()
    ).json()["ticket"]
    r = gw.client.post(f"/v1/reviews/{ticket}/reject", headers=gw.auth("admin"))
    assert r.status_code == 200 and "result" not in r.json()
    answer = gw.client.get(f"/v1/tickets/{ticket}", headers=gw.auth()).json()
    assert answer["status"] == "rejected" and "predictions" not in answer
    detail = gw.client.get(f"/v1/reviews/{ticket}", headers=gw.auth("reviewer")).json()
    assert detail["status"] == "rejected" and "result" not in detail
    assert (
        gw.client.post("/v1/reviews/nope/approve", headers=gw.auth("reviewer")).status_code == 404
    )
    assert gw.client.get("/v1/tickets/nope", headers=gw.auth()).status_code == 404


def test_block_answers_403_and_flag_answers_200(gw, scripted, sample):
    f = gw.client.post("/v1/predict", json={"inputs": [marked(sample, 0.75)]}, headers=gw.auth())
    assert f.status_code == 200 and f.json()["verdicts"] == ["flag"]
    r = gw.client.post("/v1/predict", json={"inputs": [marked(sample, 0.5)]}, headers=gw.auth())
    assert r.status_code == 403 and r.json()["detail"].startswith("request blocked by policy")
    assert "guard" not in r.json()["detail"]  # no detector internals in the refusal
    assert scripted.calls == [str(gw.ids["client"])] * 2  # the guard sees the key id
    verdicts = [e["verdict"] for e in _audit_kinds(gw)]
    assert verdicts == ["flag", "block"]


def test_overdue_hold_escalates_once(settings, gateway_factory, sample):
    from tests.serve.conftest import ScriptedGuard

    quick = settings.model_copy(
        update={
            "reviews": settings.reviews.model_copy(
                update={"escalate_after_s": 0.05, "check_every_s": 0.05}
            )
        }
    )
    with gateway_factory(quick) as gw:
        gw.state.runtime.guard = ScriptedGuard(gw.state.runtime.module)
        ticket = gw.client.post(
            "/v1/predict", json={"inputs": [marked(sample, 0.25)]}, headers=gw.auth()
        ).json()["ticket"]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if gw.client.get(f"/v1/tickets/{ticket}", headers=gw.auth()).json()["escalated"]:
                break
            time.sleep(0.05)
        assert gw.client.get(f"/v1/tickets/{ticket}", headers=gw.auth()).json()["escalated"]
        asyncio.run(gw.state.reviews.escalate_overdue())  # a second check escalates nothing new
        assert "bastion_holds_escalated_total 1.0" in gw.client.get("/metrics").text
        kinds = [e["kind"] for e in _audit_kinds(gw)]
        assert kinds.count("escalation") == 1
        # still decidable after escalation
        assert (
            gw.client.post(f"/v1/reviews/{ticket}/approve", headers=gw.auth("reviewer")).status_code
            == 200
        )


def test_listing_filters_by_status(gw, scripted, sample):
    for _ in range(2):
        gw.client.post("/v1/predict", json={"inputs": [marked(sample, 0.25)]}, headers=gw.auth())
    first = gw.client.get("/v1/reviews", headers=gw.auth("reviewer")).json()[0]["ticket"]
    gw.client.post(f"/v1/reviews/{first}/approve", headers=gw.auth("reviewer"))
    get = lambda s: gw.client.get(f"/v1/reviews?status={s}", headers=gw.auth("reviewer")).json()  # noqa: E731
    assert len(get("held")) == 1 and len(get("approved")) == 1 and len(get("all")) == 2
    assert gw.client.get("/v1/reviews?status=bogus", headers=gw.auth("reviewer")).status_code == 422
