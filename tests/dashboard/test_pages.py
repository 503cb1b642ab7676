"""Dashboard pages and actions against an in-process gateway: the review queue (input shown,
approve with a comment, audited), clients and unblock (admin only, 403 for a reviewer in the
page and the API), the audit page and an entry's proof, the overview and monitor numbers."""

from __future__ import annotations

import re

import numpy as np

from bastion.dashboard.inputs import render_sample
from bastion.dashboard.stats import RateTracker, quantile_ms
from bastion.serve.validation import RequestSpec
from bastion.store.db import make_engine
from bastion.store.reviews import escalate_overdue
from tests.dashboard.conftest import login
from tests.serve.conftest import marked


def _hold(gw, sample) -> str:
    r = gw.client.post("/v1/predict", json={"inputs": [marked(sample, 0.25)]}, headers=gw.auth())
    assert r.status_code == 202, r.text
    return r.json()["ticket"]


def test_review_queue_shows_the_input_and_approves_with_a_comment(gw, scripted, sample):
    ticket = _hold(gw, sample)
    csrf = login(gw, "reviewer")
    page = gw.client.get("/reviews").text
    card = page.split(f'id="ticket-{ticket}"')[1].split("</article>")[0]
    assert 'src="data:image/png;base64,' in card and "scripted hold" in card
    assert "test client" in card and "(withheld)" in card
    forged = gw.client.post(
        f"/reviews/{ticket}/decide", data={"action": "approve", "csrf_token": "x" + csrf}
    )
    assert forged.status_code == 403 and "CSRF" in forged.text
    assert gw.client.get(f"/v1/tickets/{ticket}", headers=gw.auth()).json()["status"] == "held"
    r = gw.client.post(
        f"/reviews/{ticket}/decide",
        data={"action": "approve", "comment": "a clean 3", "csrf_token": csrf},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"].startswith("/reviews?done=approved")
    page = gw.client.get("/reviews?done=approved").text
    assert "The request was approved." in page and "No request is waiting for review." in page
    decided = page.split('id="decided-table"')[1]
    assert "test reviewer" in decided and "a clean 3" in decided and "approved" in decided
    answer = gw.client.get(f"/v1/tickets/{ticket}", headers=gw.auth()).json()
    assert answer["status"] == "approved" and len(answer["predictions"]) == 1
    again = gw.client.post(
        f"/reviews/{ticket}/decide", data={"action": "reject", "csrf_token": csrf}
    )
    assert again.status_code == 409 and "already approved" in again.text
    audit = gw.client.get("/audit").text
    assert f"ticket {ticket} approved by key {gw.ids['reviewer']}: a clean 3" in audit
    index = int(re.search(r'<a href="/audit/entries/(\d+)">\d+</a></td><td>review', audit)[1])
    entry = gw.client.get(f"/audit/entries/{index}").text
    assert "The proof checks" in entry and ticket in entry
    assert gw.client.get("/audit/entries/999").status_code == 404


def test_escalated_holds_are_highlighted(gw, scripted, sample):
    ticket = _hold(gw, sample)
    engine = make_engine(gw.state.settings.db_url)
    assert [t.id for t in escalate_overdue(engine, older_than_s=0)] == [ticket]
    engine.dispose()
    login(gw, "reviewer")
    page = gw.client.get("/reviews").text
    assert f'class="card ticket escalated" id="ticket-{ticket}"' in page
    assert '<span class="badge escalated-badge">escalated</span>' in page


def test_clients_and_unblock_are_for_admins_only(gw):
    cid = gw.ids["client"]
    block = {"reason": "too many queries"}
    r = gw.client.put(f"/v1/clients/{cid}/block", json=block, headers=gw.auth("admin"))
    assert r.status_code == 200
    csrf = login(gw, "reviewer")
    assert "/clients" not in gw.client.get("/").text.split("</nav>")[0]
    page = gw.client.get("/clients")
    assert page.status_code == 403 and "this needs the role admin" in page.text
    denied = gw.client.post(f"/clients/{cid}/unblock", data={"csrf_token": csrf})
    assert denied.status_code == 403
    api = gw.client.delete(f"/v1/clients/{cid}/block", headers=gw.auth("reviewer"))
    assert api.status_code == 403
    assert gw.client.get(f"/v1/clients/{cid}/block", headers=gw.auth("admin")).status_code == 200

    gw.client.cookies.clear()
    csrf = login(gw, "admin")
    page = gw.client.get("/clients").text
    row = page.split(f'id="block-{cid}"')[1].split("</tr>")[0]
    assert "test client" in row and "too many queries" in row
    assert "test reviewer" in page.split('id="keys-table"')[1]  # keys by name and role
    assert gw.client.post(f"/clients/{cid}/unblock", data={"a": "1"}).status_code == 403  # no CSRF
    r = gw.client.post(f"/clients/{cid}/unblock", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303
    page = gw.client.get(r.headers["location"]).text
    assert "Client test client was unblocked." in page and "no client is blocked" in page
    assert gw.client.get(f"/v1/clients/{cid}/block", headers=gw.auth("admin")).status_code == 404
    again = gw.client.post(f"/clients/{cid}/unblock", data={"csrf_token": csrf})
    assert again.status_code == 404 and "is not blocked" in again.text
    assert f"client {cid} block remove (by key {gw.ids['admin']})" in gw.client.get("/audit").text


def test_verify_now_is_an_admin_action(gw, sample):
    gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
    csrf = login(gw, "reviewer")
    assert "Verify now" not in gw.client.get("/audit").text
    assert gw.client.post("/audit/verify", data={"csrf_token": csrf}).status_code == 403
    gw.client.cookies.clear()
    csrf = login(gw, "admin")
    page = gw.client.get("/audit").text
    assert "Verify now" in page and 'id="tree-size">1<' in page
    report = gw.client.post("/audit/verify", data={"csrf_token": csrf})
    assert report.status_code == 200 and "Verified" in report.text
    assert "not checked (no signing key configured" in report.text  # honest: integrity only


def test_overview_and_monitor_show_the_metrics(gw, scripted, sample):
    for _ in range(3):
        assert (
            gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth()).status_code
            == 200
        )
    _hold(gw, sample)
    login(gw, "reviewer")
    home = gw.client.get("/").text
    assert re.search(r'id="open-reviews"><a href="/reviews">1<', home)
    assert 'id="requests">4<' in home and 'id="guard"><span class="badge v-allow">on' in home
    mix = home.split('id="verdict-mix"')[1].split("</table>")[0]
    assert re.search(r"v-allow\">allow</span></td><td>3</td><td>75 %", mix)
    assert re.search(r"v-hold\">hold</span></td><td>1</td><td>25 %", mix)
    assert 'id="p50">' in home and 'id="p50">—' not in home
    monitor = gw.client.get("/monitor")
    nonce = re.search(r'<script src="/static/dashboard.js" nonce="([^"]+)">', monitor.text)[1]
    assert f"'nonce-{nonce}'" in monitor.headers["content-security-policy"]
    live = gw.client.get("/monitor/live").text
    assert "<html" not in live and 'id="requests">4<' in live
    css = gw.client.get("/static/dashboard.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert gw.client.get("/static/../app.py").status_code == 404
    assert gw.client.get("/static/nope.js").status_code == 404


def test_feature_table_marks_values_out_of_range():
    spec = RequestSpec(
        sample_shape=(3,),
        modality="tabular",
        lower=np.array([0.0, 0.0, -1.0]),
        upper=np.array([1.0, 10.0, 1.0]),
        feature_names=("age", "income", "score"),
    )
    shown = render_sample(np.array([0.5, 10.05, -0.999]), spec)
    assert shown.image is None and shown.out_of_range == 1
    by_name = {f.name: f for f in shown.features}
    assert by_name["income"].out_of_range and not by_name["age"].out_of_range
    assert by_name["score"].at_edge and not by_name["age"].at_edge
    assert shown.features[0].name == "income"  # the marked values first


def test_latency_quantiles_and_rate():
    buckets = [(0.001, 10.0), (0.01, 90.0), (0.1, 99.0), (float("inf"), 100.0)]
    assert quantile_ms(buckets, 0.5) == 10.0 and quantile_ms(buckets, 0.99) == 100.0
    assert quantile_ms([(float("inf"), 0.0)], 0.5) is None
    tracker = RateTracker(started=0.0)
    assert tracker.rate(0, now=10.0) == 0.0
    assert tracker.rate(50, now=20.0) == 5.0


def test_the_dashboard_can_be_switched_off(settings, gateway_factory):
    off = settings.model_copy(
        update={"dashboard": settings.dashboard.model_copy(update={"enabled": False})}
    )
    with gateway_factory(off) as g:
        assert g.client.get("/", follow_redirects=False).status_code == 404
        assert g.client.get("/login").status_code == 404
        assert g.client.get("/v1/reviews", headers=g.auth("reviewer")).status_code == 200
