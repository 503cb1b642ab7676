"""``/login`` and ``/logout``: an API key of the reviewer or admin role opens a server-side
session; the key is checked once, here, and never stored (neither in the browser nor in
the session). The login form carries a double-submit CSRF token (a short-lived cookie and
a hidden field) because there is no session yet; logout needs the session's token."""

from __future__ import annotations

import hmac
import logging
import secrets

import anyio.to_thread
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from bastion.dashboard.render import page
from bastion.dashboard.session import (
    COOKIE,
    DASHBOARD_ROLES,
    LOGIN_COOKIE,
    checked_form,
    clear_cookie,
    current_user,
    read_form,
    session_user,
    set_cookie,
)
from bastion.store import sessions as sessionstore

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
LOGIN_FORM_S = 900  # how long a login form stays usable


def safe_next(target: str | None) -> str:
    """Where to go after login: a path on this site, never another host."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


def _login_page(
    request: Request, *, error: str = "", next_: str = "/", status_code: int = 200
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = page(
        request,
        "login.html.j2",
        user=None,
        status_code=status_code,
        login_csrf=token,
        error=error,
        next=safe_next(next_),
    )
    set_cookie(response, request, LOGIN_COOKIE, token, max_age=LOGIN_FORM_S, path="/login")
    return response


@router.get("/login", response_class=HTMLResponse)
async def login_form(request: Request, next: str = "/") -> Response:
    if await session_user(request) is not None:
        return RedirectResponse(safe_next(next), status_code=303)
    return _login_page(request, next_=next)


def _refuse(request: Request, reason: str) -> None:
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.auth_failures.labels(reason=f"dashboard-{reason}").inc()


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await read_form(request)
    next_ = safe_next(form.get("next"))
    expected = request.cookies.get(LOGIN_COOKIE, "")
    given = form.get("csrf_token", "")
    if not expected or not hmac.compare_digest(expected.encode(), given.encode()):
        _refuse(request, "csrf")
        return _login_page(
            request,
            error="the login form expired or was not sent from this page: try again",
            next_=next_,
            status_code=403,
        )
    key = form.get("key", "").strip()
    if not key:
        return _login_page(request, error="enter an API key", next_=next_, status_code=400)
    info = await request.app.state.authenticator.resolve(key)
    if info is None or not info.active:
        _refuse(request, "unknown" if info is None else "revoked")
        return _login_page(
            request, error="unknown or revoked API key", next_=next_, status_code=401
        )
    if info.role not in DASHBOARD_ROLES:
        _refuse(request, "role")
        return _login_page(
            request,
            error=f"a {info.role} key cannot use the dashboard: log in with a reviewer or "
            "admin key",
            next_=next_,
            status_code=403,
        )
    settings = request.app.state.settings.dashboard
    engine = request.app.state.engine

    def open_session() -> str:
        sessionstore.purge_expired(engine, idle_s=settings.session_idle_s)
        token, _ = sessionstore.create_session(engine, info, max_s=settings.session_max_s)
        return token

    token = await anyio.to_thread.run_sync(open_session)
    log.info("dashboard login: key %d (%s)", info.id, info.role)
    response = RedirectResponse(next_, status_code=303)
    set_cookie(response, request, COOKIE, token, max_age=int(settings.session_max_s))
    clear_cookie(response, request, LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout", response_class=HTMLResponse)
async def logout(request: Request) -> Response:
    user = await current_user(request)
    await checked_form(request, user)
    token = request.cookies.get(COOKIE, "")
    await anyio.to_thread.run_sync(sessionstore.delete_session, request.app.state.engine, token)
    log.info("dashboard logout: key %d", user.key_id)
    response = RedirectResponse("/login", status_code=303)
    clear_cookie(response, request, COOKIE)
    return response
