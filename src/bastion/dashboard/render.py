"""Rendering dashboard pages: the Jinja2 environment, the CSP nonce and security headers."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from bastion.dashboard.session import DashboardUser

NAV: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("/", "Overview", ("reviewer", "admin")),
    ("/assessments", "Assessments", ("reviewer", "admin")),
    ("/reviews", "Review queue", ("reviewer", "admin")),
    ("/risks", "Risk register", ("reviewer", "admin")),
    ("/clients", "Clients", ("admin",)),
    ("/audit", "Audit", ("reviewer", "admin")),
    ("/monitor", "Monitor", ("reviewer", "admin")),
)


@dataclass(frozen=True)
class NavItem:
    href: str
    label: str
    current: bool


def utc(ts: float) -> str:
    """A unix time as ``YYYY-MM-DD HH:MM:SS`` UTC (templates: ``| utc``)."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


@lru_cache(maxsize=1)
def env() -> Environment:
    environment = Environment(
        loader=PackageLoader("bastion.dashboard", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    environment.filters["utc"] = utc
    return environment


def csp(nonce: str) -> str:
    """Nothing from elsewhere: local styles and scripts (scripts need the nonce too), inline
    images only as data URIs, forms posting only here, no framing."""
    return (
        f"default-src 'none'; script-src 'self' 'nonce-{nonce}'; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'"
    )


def security_headers(nonce: str) -> dict[str, str]:
    return {
        "Content-Security-Policy": csp(nonce),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cache-Control": "no-store",
    }


LIVE_ONLY = ("/monitor",)  # pages of a serving gateway (not of `bastion dashboard`)


def nav(user: DashboardUser | None, path: str, *, live: bool = True) -> list[NavItem]:
    if user is None:
        return []
    return [
        NavItem(href, label, path == href or (href != "/" and path.startswith(href)))
        for href, label, roles in NAV
        if user.role in roles and (live or href not in LIVE_ONLY)
    ]


def is_live(request: Request) -> bool:
    """A served model's live pages exist (the monitor, the overview's live numbers): not in
    ``bastion dashboard`` (no model) nor in front of an LLM upstream (no predict route)."""
    state = request.app.state
    return getattr(state, "runtime", None) is not None and getattr(state, "dashboard_live", True)


def is_read_only(request: Request) -> bool:
    """True in ``bastion dashboard`` (no model, no edits)."""
    return bool(getattr(request.app.state, "dashboard_read_only", False))


def page(
    request: Request,
    template: str,
    *,
    user: DashboardUser | None,
    status_code: int = 200,
    **context: Any,
) -> HTMLResponse:
    """Render ``template`` with the common context (user, CSRF token, nav, model, nonce,
    read-only)."""
    nonce = secrets.token_urlsafe(16)
    runtime = getattr(request.app.state, "runtime", None)
    read_only = is_read_only(request)
    html = (
        env()
        .get_template(template)
        .render(
            user=user,
            csrf=user.csrf if user is not None else "",
            nav=nav(user, request.url.path, live=is_live(request)),
            read_only=read_only,
            model=runtime.loaded.name if runtime is not None else "",
            nonce=nonce,
            **context,
        )
    )
    return HTMLResponse(html, status_code=status_code, headers=security_headers(nonce))


def error_page(
    request: Request, user: DashboardUser | None, status_code: int, title: str, detail: str
) -> HTMLResponse:
    """The error page (403, 404, 409, …) with its status, a title and one line of detail."""
    return page(
        request, "error.html.j2", user=user, status_code=status_code, title=title, detail=detail
    )
