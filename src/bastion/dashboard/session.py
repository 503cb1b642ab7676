"""Login sessions of the dashboard as route dependencies, and the CSRF check of its forms.

The browser holds one cookie, ``bastion_session`` (HttpOnly, SameSite=Strict, Path=/,
Secure over https), whose value is a random token; the session itself (key id, name, role,
CSRF token, times) is in the store (:mod:`bastion.store.sessions`). Each page declares the
roles it admits with :func:`require`: no session (or an expired one, or one whose key was
revoked) is :class:`LoginRequired` (a redirect to ``/login``); a role that is not admitted
is :class:`PageForbidden` (the 403 page). Every form posts a ``csrf_token`` hidden field,
compared in constant time with the session's by :func:`checked_form`.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated
from urllib.parse import parse_qsl

import anyio.to_thread
from fastapi import Depends, Request, Response

from bastion.serve.settings import DashboardSettings
from bastion.store import blocks as blockstore
from bastion.store import sessions as sessionstore
from bastion.store.keys import KeyInfo

COOKIE = "bastion_session"
LOGIN_COOKIE = "bastion_login_csrf"  # double-submit token of the login form (no session yet)
MAX_FORM_BYTES = 64 * 1024
DASHBOARD_ROLES = ("reviewer", "admin")


@dataclass(frozen=True)
class DashboardUser:
    """The logged-in reviewer or admin (never the key itself)."""

    key_id: int
    name: str
    role: str
    csrf: str
    expires: datetime

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def label(self) -> str:
        return self.name or f"key {self.key_id}"


class LoginRequired(Exception):
    """No live session: the handler redirects to ``/login``."""


class PageForbidden(Exception):
    """The session's role may not see the page or do the action (the 403 page)."""

    def __init__(self, user: DashboardUser | None, detail: str) -> None:
        super().__init__(detail)
        self.user = user
        self.detail = detail


class BadForm(Exception):
    """A form that cannot be read (the 400 / 413 / 415 page)."""

    def __init__(self, detail: str, status: int = 400) -> None:
        super().__init__(detail)
        self.detail = detail
        self.status = status


def is_https(request: Request) -> bool:
    return request.url.scheme == "https"


def set_cookie(
    response: Response, request: Request, name: str, value: str, *, max_age: int, path: str = "/"
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="strict",
        secure=is_https(request),
    )


def clear_cookie(response: Response, request: Request, name: str, path: str = "/") -> None:
    response.delete_cookie(
        name, path=path, httponly=True, samesite="strict", secure=is_https(request)
    )


async def read_form(request: Request) -> dict[str, str]:
    """The url-encoded form of a POST (the last value of a repeated field wins)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise BadForm("expected a form (application/x-www-form-urlencoded)", 415)
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise BadForm(f"the form is larger than {MAX_FORM_BYTES} bytes", 413)
    try:
        text = body.decode("utf-8")
        pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=50)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BadForm(f"unreadable form: {exc}") from None
    return dict(pairs)


def _settings(request: Request) -> DashboardSettings:
    return request.app.state.settings.dashboard


async def session_user(request: Request) -> DashboardUser | None:
    """The user of the request's session cookie, or None (no, expired or revoked session)."""
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    engine = request.app.state.engine
    record = await anyio.to_thread.run_sync(
        lambda: sessionstore.get_session(engine, token, idle_s=_settings(request).session_idle_s)
    )
    if record is None:
        return None
    key = await anyio.to_thread.run_sync(blockstore.client_info, engine, record.key_id)
    if key is None or not key.active or key.role not in DASHBOARD_ROLES:
        await anyio.to_thread.run_sync(sessionstore.delete_session, engine, token)
        return None
    user = DashboardUser(
        key_id=record.key_id,
        name=record.key_name,
        role=key.role,
        csrf=record.csrf,
        expires=record.expires,
    )
    request.state.dashboard_user = user
    return user


async def current_user(request: Request) -> DashboardUser:
    """Dependency: the logged-in user; :class:`LoginRequired` without a live session."""
    user = await session_user(request)
    if user is None:
        raise LoginRequired()
    return user


def require(*roles: str) -> Callable[..., Awaitable[DashboardUser]]:
    """A dependency admitting sessions of one of ``roles`` (else the 403 page)."""

    async def dependency(user: Annotated[DashboardUser, Depends(current_user)]) -> DashboardUser:
        if user.role not in roles:
            raise PageForbidden(
                user, f"this needs the role {' or '.join(roles)}; you are logged in as {user.role}"
            )
        return user

    dependency.__name__ = f"dashboard_{'_or_'.join(roles)}"
    return dependency


async def checked_form(request: Request, user: DashboardUser) -> dict[str, str]:
    """The POSTed form, once its ``csrf_token`` matches the session's (else 403)."""
    form = await read_form(request)
    if not hmac.compare_digest(form.get("csrf_token", "").encode(), user.csrf.encode()):
        raise PageForbidden(user, "the form's CSRF token is missing or wrong: reload the page")
    return form


Viewer = Annotated[DashboardUser, Depends(require("reviewer", "admin"))]
Admin = Annotated[DashboardUser, Depends(require("admin"))]


async def key_of(request: Request, user: DashboardUser) -> KeyInfo:
    """The user's key record (for the gateway's services, which act as a key)."""
    key = await anyio.to_thread.run_sync(
        blockstore.client_info, request.app.state.engine, user.key_id
    )
    if key is None or not key.active:
        raise LoginRequired()
    return key
