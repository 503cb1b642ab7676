"""``/v1/risks``: the risk register behind the gateway (``risk_register`` in serve.yaml).

* ``GET /v1/risks`` — every risk with its scores (RPN, action priority, likelihood × impact
  cell), owner, status and controls (reviewer or admin);
* ``GET /v1/risks/{id}`` — one risk, with the history of every change;
* ``PATCH /v1/risks/{id}`` — set the owner, the status (accepting needs a reason) or a
  control's state (admin only: a reviewer gets 403). The change is recorded in the risk's
  history with the admin's key and audited before it is answered.

404 when no register is configured or the risk is unknown; 422 for an edit the register
refuses (an unknown status or control state, an accepted risk without a reason).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Request, status
from pydantic import BaseModel, ConfigDict, Field

from bastion.errors import ConfigError
from bastion.risk.catalogue import Control
from bastion.risk.register import Change, Risk, RiskRegister
from bastion.serve.auth import AdminKey, ReviewerKey
from bastion.serve.deps import AUTH_ERRORS
from bastion.serve.errors import error_responses
from bastion.serve.risks import NoRegister, RiskRegisterFile
from bastion.store.keys import KeyInfo

router = APIRouter(prefix="/v1/risks", tags=["risks"])
RiskPath = Annotated[
    str, Path(pattern=r"^[A-Za-z0-9_.:-]{1,64}$", description="a risk id", examples=["EVA-01"])
]
_MISSING = {404: "no risk register is configured, or no such risk"}


class RiskView(BaseModel):
    id: str
    title: str
    layer: str
    severity: int
    occurrence: int
    detection: int
    rpn: int
    priority: Literal["high", "medium", "low"]
    likelihood: int
    impact: int
    level: Literal["low", "medium", "high", "critical"]
    owner: str
    status: Literal["open", "mitigated", "accepted"]
    status_reason: str
    controls: list[Control]
    measured: dict[str, float]

    @classmethod
    def of(cls, risk: Risk) -> RiskView:
        return cls(
            id=risk.id,
            title=risk.title,
            layer=risk.layer,
            severity=risk.severity,
            occurrence=risk.occurrence,
            detection=risk.detection,
            rpn=risk.rpn,
            priority=risk.priority,
            likelihood=risk.likelihood,
            impact=risk.impact,
            level=risk.level,
            owner=risk.owner,
            status=risk.status,
            status_reason=risk.status_reason,
            controls=risk.controls,
            measured=risk.measured,
        )


class RiskDetail(RiskView):
    description: str
    history: list[Change]

    @classmethod
    def of(cls, risk: Risk) -> RiskDetail:
        return cls(
            **RiskView.of(risk).model_dump(), description=risk.description, history=risk.history
        )


class ControlEdit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=64)
    state: Literal["planned", "implemented", "verified"]
    name: str | None = Field(None, max_length=200, description="needed to add a new control")


class RiskEdit(BaseModel):
    """What to change; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    owner: str | None = Field(None, min_length=1, max_length=128)
    status: Literal["open", "mitigated", "accepted"] | None = None
    reason: str = Field("", max_length=2000, description="why (needed to accept a risk)")
    control: ControlEdit | None = None


def registry(request: Request) -> RiskRegisterFile:
    state = request.app.state
    reg = getattr(state, "risk_register", None)
    if reg is None:
        reg = state.risk_register = RiskRegisterFile(state.settings.risk_register)
    return reg


def _not_found(detail: str) -> HTTPException:
    return HTTPException(status.HTTP_404_NOT_FOUND, detail=detail)


async def read_register(request: Request) -> RiskRegister:
    try:
        return await registry(request).read()
    except NoRegister as exc:
        raise _not_found(str(exc)) from None


def find(register: RiskRegister, risk_id: str) -> Risk:
    try:
        return register.get(risk_id)
    except ConfigError:
        raise _not_found(f"no risk {risk_id} in the register") from None


async def edit_risk(request: Request, risk_id: str, edit: RiskEdit, admin: KeyInfo) -> Risk:
    """Apply ``edit`` as ``admin`` (404 unknown risk, 422 refused edit), then audit it."""
    by = f"key {admin.id}" + (f" ({admin.name})" if admin.name else "")
    find(await read_register(request), risk_id)

    def apply(register: RiskRegister) -> Risk:
        risk = register.get(risk_id)
        if edit.owner is not None:
            risk = register.set_owner(risk_id, edit.owner, by=by)
        if edit.status is not None:
            risk = register.set_status(risk_id, edit.status, reason=edit.reason, by=by)
        if edit.control is not None:
            c = edit.control
            risk = register.set_control(risk_id, c.id, c.state, name=c.name, by=by)
        return risk

    try:
        risk = await registry(request).edit(risk_id, apply)
    except ConfigError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(exc)) from None
    entry: dict[str, Any] = {
        "kind": "risk",
        "action": "edit",
        "risk_id": risk_id,
        "changes": edit.model_dump(exclude_none=True, exclude_defaults=True),
        "by_key_id": admin.id,
    }
    await request.app.state.audit.submit(entry)
    return risk


@router.get("", response_model=list[RiskView], responses=error_responses(*AUTH_ERRORS, 404))
async def list_risks(request: Request, _key: ReviewerKey) -> list[RiskView]:
    return [RiskView.of(r) for r in (await read_register(request)).risks]


@router.get(
    "/{risk_id}",
    response_model=RiskDetail,
    responses=error_responses(*AUTH_ERRORS, 404, 422, describe=_MISSING),
)
async def get_risk(request: Request, risk_id: RiskPath, _key: ReviewerKey) -> RiskDetail:
    return RiskDetail.of(find(await read_register(request), risk_id))


@router.patch(
    "/{risk_id}",
    response_model=RiskDetail,
    responses=error_responses(400, *AUTH_ERRORS, 404, 422, describe=_MISSING),
)
async def patch_risk(
    request: Request, risk_id: RiskPath, body: RiskEdit, admin: AdminKey
) -> RiskDetail:
    """Change the owner, status or a control (admin); recorded in the risk's history."""
    return RiskDetail.of(await edit_risk(request, risk_id, body, admin))
