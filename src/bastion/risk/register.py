"""The risk register: one scored risk per applicable threat, with owners, status, controls
and the history of every change (what changed, old → new, and the evidence behind it).

Stored as JSON (``bastion risk init --out register.json``); derived scores (RPN, action
priority, ISO 31000 cell) are computed from severity, occurrence and detection on read.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bastion.config import describe_validation_error
from bastion.errors import ConfigError
from bastion.risk import scoring
from bastion.risk.catalogue import Catalogue, Control, EvidenceSpec, load_catalogue
from bastion.risk.system import Layer, SystemProfile

log = logging.getLogger(__name__)
Status = Literal["open", "mitigated", "accepted"]
STATUSES: tuple[str, ...] = Status.__args__
REGISTER_VERSION = "1"


def _now() -> datetime:
    return datetime.now(UTC)


class Evidence(BaseModel):
    """What justified a change: a file (report, guard evaluation) and the value read from it."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["profile", "report", "guard_evaluation", "manual"]
    source: str | None = Field(None, description="file path the evidence came from")
    sha256: str | None = Field(None, description="SHA-256 of that file")
    metric: str | None = None
    value: float | None = None
    detail: str = ""


class Change(BaseModel):
    """One change to a risk, kept forever in its history."""

    model_config = ConfigDict(extra="forbid")

    at: datetime = Field(default_factory=_now)
    field: str
    old: Any = None
    new: Any = None
    reason: str = ""
    evidence: Evidence | None = None
    by: str | None = None


class Risk(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    description: str = ""
    layer: Layer
    atlas: list[str]
    nist_ai_rmf: list[str] = Field(default_factory=list)
    controls: list[Control] = Field(default_factory=list)
    probe: str | None = None
    evidence_spec: EvidenceSpec | None = None
    detectors: list[str] = Field(default_factory=list)
    owner: str = "unassigned"
    status: Status = "open"
    status_reason: str = ""
    severity: int = Field(ge=1, le=10)
    occurrence: int = Field(ge=1, le=10)
    detection: int = Field(ge=1, le=10)
    measured: dict[str, float] = Field(
        default_factory=dict, description="latest measured evidence values, by metric"
    )
    history: list[Change] = Field(default_factory=list)

    @model_validator(mode="after")
    def _accepted_has_reason(self) -> Risk:
        if self.status == "accepted" and not self.status_reason.strip():
            raise ValueError(f"{self.id}: an accepted risk needs a reason (status_reason)")
        return self

    @property
    def rpn(self) -> int:
        return scoring.rpn(self.severity, self.occurrence, self.detection)

    @property
    def priority(self) -> scoring.Priority:
        return scoring.action_priority(self.severity, self.occurrence, self.detection)

    @property
    def likelihood(self) -> int:
        return scoring.likelihood(self.occurrence)

    @property
    def impact(self) -> int:
        return scoring.impact(self.severity)

    @property
    def level(self) -> scoring.Level:
        return scoring.iso_level(self.likelihood, self.impact)

    def derived(self) -> dict[str, Any]:
        """Scores computed from S, O, D (for exports and reports)."""
        return {
            "rpn": self.rpn,
            "priority": self.priority,
            "likelihood": self.likelihood,
            "impact": self.impact,
            "iso_score": self.likelihood * self.impact,
            "level": self.level,
        }

    def change(
        self,
        field: str,
        new: Any,
        *,
        reason: str,
        evidence: Evidence | None = None,
        by: str | None = None,
    ) -> Change | None:
        """Set ``field`` to ``new`` and record it; None (and no record) when unchanged."""
        old = getattr(self, field)
        if old == new:
            return None
        setattr(self, field, new)
        rec = Change(field=field, old=old, new=new, reason=reason, evidence=evidence, by=by)
        self.history.append(rec)
        return rec


class Excluded(BaseModel):
    id: str
    title: str
    reason: str


class UpdateRecord(BaseModel):
    """One `bastion risk update` run: which files, how many risks changed."""

    at: datetime = Field(default_factory=_now)
    sources: list[Evidence] = Field(default_factory=list)
    changes: int = 0


class RiskRegister(BaseModel):
    model_config = ConfigDict(extra="forbid")

    register_version: str = REGISTER_VERSION
    catalogue_version: str
    system: SystemProfile
    created: datetime = Field(default_factory=_now)
    risks: list[Risk] = Field(default_factory=list)
    excluded: list[Excluded] = Field(default_factory=list)
    updates: list[UpdateRecord] = Field(default_factory=list)

    def get(self, risk_id: str) -> Risk:
        for r in self.risks:
            if r.id == risk_id:
                return r
        raise ConfigError(
            f"no risk {risk_id!r} in the register: it holds {', '.join(r.id for r in self.risks)}"
        )

    def set_status(
        self, risk_id: str, status: str, *, reason: str = "", by: str | None = None
    ) -> Risk:
        """Open, mitigate or accept a risk; accepting needs a reason."""
        if status not in STATUSES:
            raise ConfigError(f"unknown status {status!r}: use one of {', '.join(STATUSES)}")
        if status == "accepted" and not reason.strip():
            raise ConfigError(
                f"accepting {risk_id} needs a reason: pass --reason 'why the risk is tolerable'"
            )
        risk = self.get(risk_id)
        ev = Evidence(kind="manual", detail=reason) if reason else Evidence(kind="manual")
        risk.change("status", status, reason=reason or f"set to {status}", evidence=ev, by=by)
        if reason:
            risk.change("status_reason", reason, reason="status reason", by=by)
        return risk

    def set_owner(self, risk_id: str, owner: str, *, by: str | None = None) -> Risk:
        if not owner.strip():
            raise ConfigError("the owner cannot be empty")
        risk = self.get(risk_id)
        risk.change(
            "owner", owner, reason="owner assigned", evidence=Evidence(kind="manual"), by=by
        )
        return risk

    def set_control(
        self,
        risk_id: str,
        control_id: str,
        state: str,
        *,
        name: str | None = None,
        by: str | None = None,
    ) -> Risk:
        """Add a control to a risk or move it to planned / implemented / verified."""
        states = ("planned", "implemented", "verified")
        if state not in states:
            raise ConfigError(f"unknown control state {state!r}: use one of {', '.join(states)}")
        risk = self.get(risk_id)
        controls = [c.model_copy() for c in risk.controls]
        match = next((c for c in controls if c.id == control_id), None)
        if match is None:
            if not name:
                known = ", ".join(c.id for c in risk.controls) or "none"
                raise ConfigError(
                    f"{risk_id} has no control {control_id!r} (it has {known}): pass --name to add it"
                )
            controls.append(Control(id=control_id, name=name, state=state))  # type: ignore[arg-type]
        else:
            match.state = state  # type: ignore[assignment]
        risk.change(
            "controls",
            controls,
            reason=f"control {control_id} → {state}",
            evidence=Evidence(kind="manual"),
            by=by,
        )
        return risk


def build_register(system: SystemProfile, catalogue: Catalogue | None = None) -> RiskRegister:
    """Score every catalogue threat that applies to ``system``."""
    catalogue = catalogue or load_catalogue()
    factors = system.factors()
    risks, excluded = [], []
    for t in catalogue.threats:
        why_not = t.applies(factors)
        if why_not:
            excluded.append(Excluded(id=t.id, title=t.title, reason=why_not))
            continue
        scores = {k: getattr(t, k).score(factors) for k in ("severity", "occurrence", "detection")}
        risk = Risk(
            id=t.id,
            title=t.title,
            description=t.description,
            layer=t.layer,
            atlas=list(t.atlas),
            nist_ai_rmf=list(t.nist_ai_rmf),
            controls=[c.model_copy() for c in t.controls],
            probe=t.probe,
            evidence_spec=t.evidence,
            detectors=list(t.detectors),
            owner=system.owner_for(t.layer),
            severity=scores["severity"][0],
            occurrence=scores["occurrence"][0],
            detection=scores["detection"][0],
        )
        for name, (value, why) in scores.items():
            risk.history.append(
                Change(
                    field=name,
                    old=None,
                    new=value,
                    reason=f"initial score from {why}",
                    evidence=Evidence(kind="profile", detail=why),
                )
            )
        risks.append(risk)
    return RiskRegister(
        catalogue_version=catalogue.version, system=system, risks=risks, excluded=excluded
    )


def save_register(register: RiskRegister, path: str | Path) -> Path:
    """Write the register as JSON atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(register.model_dump_json(indent=2))
    tmp.replace(path)
    return path


def load_register(path: str | Path) -> RiskRegister:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(
            f"register not found: {path}: create one with `bastion risk init --system system.yaml`"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    try:
        return RiskRegister.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_validation_error(exc, str(path))) from None
