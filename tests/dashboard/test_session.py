"""Dashboard login sessions: cookie attributes, no key in the browser or the store, CSRF on
every form, expiry, logout, revocation, and the redirect target."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import select

from bastion.store.db import make_engine, session_factory
from bastion.store.keys import create_key
from bastion.store.sessions import DashboardSession, create_session, get_session, purge_expired
from tests.dashboard.conftest import csrf_of, login


def _set_cookie(response) -> str:
    return "; ".join(v for k, v in response.headers.multi_items() if k == "set-cookie")


def test_no_session_redirects_to_login_and_login_page_is_strict(gw):
    r = gw.client.get("/reviews?x=1", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2Freviews%3Fx%3D1"
    page = gw.client.get("/login")
    assert page.status_code == 200 and 'name="key"' in page.text and 'for="key"' in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text)  # nothing remote
    csp = page.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp
    assert "'unsafe-inline'" not in csp and "form-action 'self'" in csp
    assert page.headers["x-frame-options"] == "DENY"
    cookie = _set_cookie(page)
    assert "bastion_login_csrf=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie


def test_login_cookie_is_httponly_strict_and_holds_no_key(gw):
    form = gw.client.get("/login")
    r = gw.client.post(
        "/login",
        data={"key": gw.keys["reviewer"], "csrf_token": csrf_of(form.text)},
        follow_redirects=False,
    )
    assert r.status_code == 303 and r.headers["location"] == "/"
    cookie = _set_cookie(r)
    token = re.search(r"bastion_session=([^;]+)", cookie).group(1)
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/" in cookie
    assert "Secure" not in cookie.split("bastion_session=")[1].split(",")[0]  # plain http here
    assert gw.keys["reviewer"] not in cookie and token != gw.keys["reviewer"]
    engine = make_engine(gw.state.settings.db_url)
    with session_factory(engine)() as s:
        rows = list(s.scalars(select(DashboardSession)))
    engine.dispose()
    assert len(rows) == 1 and rows[0].role == "reviewer" and rows[0].key_id == gw.ids["reviewer"]
    stored = " ".join(str(v) for v in vars(rows[0]).values())
    assert token not in stored and gw.keys["reviewer"] not in stored  # only the token's digest
    home = gw.client.get("/")
    assert home.status_code == 200 and "test reviewer · reviewer" in home.text
    assert gw.keys["reviewer"] not in home.text


def test_cookie_is_secure_over_https(settings, gateway_factory):
    with gateway_factory(settings, base_url="https://testserver") as gw:
        form = gw.client.get("/login")
        assert "Secure" in _set_cookie(form)
        r = gw.client.post(
            "/login",
            data={"key": gw.keys["admin"], "csrf_token": csrf_of(form.text)},
            follow_redirects=False,
        )
        assert r.status_code == 303 and "Secure" in _set_cookie(r)
        assert gw.client.get("/clients").status_code == 200


def test_login_refusals(gw):
    def attempt(key: str, csrf: str | None = None) -> tuple[int, str]:
        form = gw.client.get("/login")
        token = csrf_of(form.text) if csrf is None else csrf
        r = gw.client.post("/login", data={"key": key, "csrf_token": token})
        return r.status_code, r.text

    status, text = attempt("bst_not-a-key")
    assert status == 401 and "unknown or revoked API key" in text
    status, text = attempt(gw.keys["client"])
    assert status == 403 and "a client key cannot use the dashboard" in text
    status, text = attempt(gw.keys["admin"], csrf="forged")
    assert status == 403 and "login form expired" in text
    status, _ = attempt("")
    assert status == 400
    r = gw.client.post("/login", content=b"{}", headers={"content-type": "application/json"})
    assert r.status_code == 415
    assert gw.client.get("/", follow_redirects=False).status_code == 303  # still logged out
    assert (
        'bastion_auth_failures_total{reason="dashboard-role"} 1.0' in gw.client.get("/metrics").text
    )


def test_next_target_stays_on_this_site(gw):
    form = gw.client.get("/login")
    for target, expected in (("//evil.example/x", "/"), ("/audit", "/audit"), ("http://e", "/")):
        r = gw.client.post(
            "/login",
            data={"key": gw.keys["admin"], "csrf_token": csrf_of(form.text), "next": target},
            follow_redirects=False,
        )
        assert r.headers["location"] == expected
        gw.client.cookies.delete("bastion_session")
        form = gw.client.get("/login")


def test_logout_deletes_the_session_server_side(gw):
    csrf = login(gw, "reviewer")
    token = gw.client.cookies.get("bastion_session")
    assert gw.client.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    assert gw.client.get("/").status_code == 200  # a forged logout did nothing
    r = gw.client.post("/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login"
    assert 'bastion_session=""' in _set_cookie(r) or "Max-Age=0" in _set_cookie(r)
    gw.client.cookies.set("bastion_session", token)  # replaying the old cookie
    assert gw.client.get("/", follow_redirects=False).status_code == 303


def test_revoking_the_key_ends_its_sessions(gw):
    login(gw, "reviewer")
    r = gw.client.post(f"/v1/keys/{gw.ids['reviewer']}/revoke", headers=gw.auth("admin"))
    assert r.status_code == 200
    assert gw.client.get("/", follow_redirects=False).status_code == 303


def test_idle_and_absolute_expiry(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 's.db'}")
    info, _ = create_key(engine, "reviewer", "r")
    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    token, record = create_session(engine, info, max_s=3600, now=t0)
    assert record.expires == t0 + timedelta(hours=1)
    assert get_session(engine, token, idle_s=600, now=t0 + timedelta(seconds=599)) is not None
    # the look above moved last_seen: 599 + 599 s is still within the idle limit
    assert get_session(engine, token, idle_s=600, now=t0 + timedelta(seconds=1198)) is not None
    assert get_session(engine, token, idle_s=600, now=t0 + timedelta(seconds=1799)) is None
    token, _ = create_session(engine, info, max_s=60, now=t0)
    assert get_session(engine, token, idle_s=600, now=t0 + timedelta(seconds=61)) is None
    token, _ = create_session(engine, info, max_s=60, now=t0)
    assert purge_expired(engine, idle_s=600, now=t0 + timedelta(seconds=61)) == 1
    assert get_session(engine, "x" * 500, idle_s=600) is None
    engine.dispose()


def test_idle_session_is_refused_by_the_gateway(settings, gateway_factory):
    short = settings.model_copy(
        update={"dashboard": settings.dashboard.model_copy(update={"session_idle_s": 0.3})}
    )
    with gateway_factory(short) as gw:
        login(gw, "admin")
        time.sleep(0.4)
        r = gw.client.get("/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
