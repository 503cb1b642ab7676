"""The web dashboard served by the gateway at ``/``: server-rendered pages (Jinja2, one local
CSS file and one small local script, a strict CSP with a nonce) behind a login with an API
key into a server-side session (:mod:`bastion.dashboard.session`).

Pages: overview, assessments (runs, a report, two runs compared), review queue, risk
register, clients (admin), audit, monitor. ``bastion dashboard`` serves the same pages
read-only without a model (:mod:`bastion.dashboard.readonly`). The JSON API (``/v1``)
keeps its own API-key authentication; the dashboard never hands the key to the browser.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fastapi import FastAPI


def install(app: FastAPI) -> None:
    """Add the dashboard's routes and its login / 403 handlers to the gateway ``app``."""
    from bastion.dashboard.app import install as _install

    _install(app)


__all__ = ["install"]
