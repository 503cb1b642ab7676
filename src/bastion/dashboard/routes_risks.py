"""The risk register pages: ``/risks`` (the likelihood × impact heat map and the risks by
action priority and RPN) and ``/risks/{id}`` (scores, controls and the history of evidence
that moved them). Reviewers read; owner, status and control edits are admin-only (403 for a
reviewer, as ``PATCH /v1/risks/{id}``) and go through the same code as that route."""

from __future__ import annotations

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from pydantic import ValidationError

from bastion.dashboard.render import error_page, page
from bastion.dashboard.session import Admin, DashboardUser, Viewer, checked_form, key_of
from bastion.risk.html import PRIORITY_ORDER, heat_map
from bastion.risk.register import STATUSES
from bastion.risk.scoring import IMPACT_LABELS
from bastion.serve import routes_risks as api
from bastion.serve.risks import NoRegister

router = APIRouter(include_in_schema=False)
CONTROL_STATES = ("planned", "implemented", "verified")


def _error(request: Request, user: DashboardUser, status_code: int, detail: str) -> HTMLResponse:
    return error_page(request, user, status_code, "Risk", detail)


@router.get("/risks", response_class=HTMLResponse)
async def risks(request: Request, user: Viewer) -> HTMLResponse:
    try:
        register = await api.registry(request).read()
    except NoRegister as exc:
        return page(request, "risks.html.j2", user=user, register=None, missing=str(exc))
    ordered = sorted(register.risks, key=lambda r: (PRIORITY_ORDER[r.priority], -r.rpn, r.id))
    return page(
        request,
        "risks.html.j2",
        user=user,
        register=register,
        risks=ordered,
        heat=heat_map(register),
        impact_labels=IMPACT_LABELS,
        missing="",
    )


@router.get("/risks/{risk_id}", response_class=HTMLResponse)
async def risk(request: Request, risk_id: api.RiskPath, user: Viewer, done: int = 0) -> Response:
    try:
        found = api.find(await api.read_register(request), risk_id)
    except HTTPException as exc:
        return _error(request, user, exc.status_code, str(exc.detail))
    return page(
        request,
        "risk.html.j2",
        user=user,
        risk=found,
        statuses=STATUSES,
        control_states=CONTROL_STATES,
        history=list(reversed(found.history)),
        done=bool(done),
    )


def _edit_of(form: dict[str, str]) -> api.RiskEdit:
    what = form.get("what", "")
    if what == "owner":
        return api.RiskEdit(owner=form.get("owner", "").strip())
    if what == "status":
        return api.RiskEdit(status=form.get("status"), reason=form.get("reason", "").strip())
    if what == "control":
        name = form.get("control_name", "").strip() or None
        control = {"id": form.get("control_id", "").strip(), "state": form.get("state")}
        return api.RiskEdit(control={**control, "name": name})
    raise ValueError("choose what to change: owner, status or control")


@router.post("/risks/{risk_id}/edit", response_class=HTMLResponse)
async def edit(request: Request, risk_id: api.RiskPath, user: Admin) -> Response:
    form = await checked_form(request, user)
    try:
        change = _edit_of(form)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        return _error(request, user, 400, f"{where}: {first['msg']}")
    except ValueError as exc:
        return _error(request, user, 400, str(exc))
    try:
        await api.edit_risk(request, risk_id, change, await key_of(request, user))
    except HTTPException as exc:
        return _error(request, user, exc.status_code, str(exc.detail))
    return RedirectResponse(f"/risks/{risk_id}?done=1", status_code=303)
