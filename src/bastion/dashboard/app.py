"""Mounting the dashboard on the gateway: its routers, its static files and the handlers
that turn :class:`LoginRequired` into a redirect to ``/login`` and :class:`PageForbidden`
/ :class:`BadForm` into HTML error pages (the JSON API's errors stay JSON)."""

from __future__ import annotations

from importlib import resources
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response, status
from fastapi.responses import RedirectResponse

from bastion.dashboard import (
    routes_assessments,
    routes_audit,
    routes_clients,
    routes_login,
    routes_overview,
    routes_reviews,
    routes_risks,
)
from bastion.dashboard.attestations import AttestationChecker
from bastion.dashboard.render import error_page
from bastion.dashboard.session import (
    COOKIE,
    BadForm,
    LoginRequired,
    PageForbidden,
    clear_cookie,
    session_user,
)
from bastion.dashboard.stats import RateTracker

READ_ONLY_POSTS = ("/login", "/logout", "/audit/verify")  # sessions, and a check that reads
STATIC = {"dashboard.css": "text/css; charset=utf-8", "dashboard.js": "text/javascript"}


def _static_router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/static/{name}", response_class=Response)
    async def static(name: str) -> Response:
        if name not in STATIC:
            raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no static file {name}")
        body = resources.files("bastion.dashboard").joinpath("static", name).read_bytes()
        headers = {"X-Content-Type-Options": "nosniff", "Cache-Control": "max-age=300"}
        return Response(body, media_type=STATIC[name], headers=headers)

    return r


async def _login_required(request: Request, _exc: Exception) -> Response:
    target = request.url.path if request.method == "GET" else "/"
    if request.url.query and request.method == "GET":
        target += "?" + request.url.query
    response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
    if request.cookies.get(COOKIE):
        clear_cookie(response, request, COOKIE)
    return response


async def _forbidden(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, PageForbidden)
    return error_page(request, exc.user, 403, "Not allowed", exc.detail)


async def _bad_form(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, BadForm)
    user = getattr(request.state, "dashboard_user", None)
    return error_page(request, user, exc.status, "Bad form", exc.detail)


async def refuse_writes(request: Request) -> None:
    """Read-only dashboards (``bastion dashboard``) answer every edit with the 403 page:
    only logging in and out (and the audit check, which reads) are posted."""
    if request.method in ("GET", "HEAD") or request.url.path in READ_ONLY_POSTS:
        return
    raise PageForbidden(
        await session_user(request),
        "this dashboard is read-only (bastion dashboard): make changes through "
        "`bastion serve`'s dashboard or the CLI",
    )


def install(app: FastAPI, *, read_only: bool = False) -> None:
    """Mount the dashboard; ``read_only`` refuses every edit, whatever the role."""
    app.state.dashboard_rates = RateTracker()  # the request rate counts from here
    app.state.dashboard_read_only = read_only
    key = app.state.settings.dashboard.attestation_key
    if key is not None:
        from bastion.gate.keys import load_public_key

        app.state.attestations = AttestationChecker(load_public_key(key))
    else:
        app.state.attestations = AttestationChecker(None)
    guards = [Depends(refuse_writes)] if read_only else []
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(PageForbidden, _forbidden)
    app.add_exception_handler(BadForm, _bad_form)
    app.include_router(_static_router())
    for module in (
        routes_login,
        routes_overview,
        routes_assessments,
        routes_reviews,
        routes_risks,
        routes_clients,
        routes_audit,
    ):
        app.include_router(module.router, dependencies=guards)
