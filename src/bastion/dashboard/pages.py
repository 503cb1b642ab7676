"""The dashboard route: one Jinja2 page rendered without data (the data comes from the API
with the reviewer's or admin's key, so the page itself needs no session or cookie): held
requests, blocked clients (admin key: with an unblock button), drift, recent decisions."""

from __future__ import annotations

import secrets
from functools import lru_cache

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape


@lru_cache(maxsize=1)
def _env() -> Environment:
    return Environment(
        loader=PackageLoader("bastion.dashboard", "templates"),
        autoescape=select_autoescape(["html", "j2"]),
    )


def render_index(
    *,
    model: str,
    guard: bool,
    escalate_after_s: float,
    nonce: str,
    block_expire_after_s: float | None = None,
) -> str:
    return (
        _env()
        .get_template("index.html.j2")
        .render(
            model=model,
            guard=guard,
            escalate_after_s=escalate_after_s,
            block_expire_after_s=block_expire_after_s,
            nonce=nonce,
        )
    )


def router() -> APIRouter:
    r = APIRouter(include_in_schema=False)

    @r.get("/", response_class=HTMLResponse)
    async def index(request: Request) -> HTMLResponse:
        state = request.app.state
        nonce = secrets.token_urlsafe(16)
        html = render_index(
            model=state.runtime.loaded.name,
            guard=state.runtime.guard is not None,
            escalate_after_s=state.settings.reviews.escalate_after_s,
            block_expire_after_s=state.settings.blocks.expire_after_s,
            nonce=nonce,
        )
        csp = (
            f"default-src 'self'; script-src 'nonce-{nonce}'; style-src 'unsafe-inline'; "
            "connect-src 'self'; frame-ancestors 'none'"
        )
        headers = {
            "Content-Security-Policy": csp,
            "X-Content-Type-Options": "nosniff",
            "Referrer-Policy": "no-referrer",
        }
        return HTMLResponse(html, headers=headers)

    return r
