"""Fixtures of the dashboard tests: the gateway fixtures of tests/serve (an app on a tmp
store with keys of every role, the scripted guard), and a login helper."""

from __future__ import annotations

import re

from tests.serve.conftest import (  # noqa: F401  (fixtures)
    Gateway,
    gateway_factory,
    gw,
    sample,
    scripted,
    settings,
)

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_of(html: str) -> str:
    """The CSRF token of the first form of a page."""
    match = CSRF.search(html)
    assert match is not None, "no csrf_token in the page"
    return match.group(1)


def login(gateway: Gateway, role: str) -> str:
    """Log the TestClient in with the key of ``role``; returns the session's CSRF token."""
    form = gateway.client.get("/login")
    assert form.status_code == 200
    r = gateway.client.post(
        "/login",
        data={"key": gateway.keys[role], "csrf_token": csrf_of(form.text), "next": "/"},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    page = gateway.client.get("/")
    assert page.status_code == 200
    return csrf_of(page.text)
