"""The audit page (``/audit``): the log's tree head and latest signed head, its latest
entries, one entry with its inclusion proof (checked here against the root), and "verify
now" (admin: re-hash the log and check every signed head against the gateway's configured
signing key, as ``GET /v1/audit/verify``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Path, Request
from fastapi.responses import HTMLResponse, Response

from bastion.audit import verify_inclusion
from bastion.dashboard.render import error_page, page
from bastion.dashboard.session import Admin, DashboardUser, Viewer, checked_form, key_of
from bastion.serve import routes_audit as api
from bastion.serve.params import STORE_INT_MAX, store_int_query

router = APIRouter(include_in_schema=False)
ENTRIES_SHOWN = 50


@dataclass(frozen=True)
class EntryRow:
    index: int
    kind: str
    summary: str


def summary(entry: dict[str, Any]) -> str:
    """One line about an audit entry (its kind-specific fields)."""
    kind = entry.get("kind", "?")
    if kind == "decision":
        return (
            f"request {str(entry.get('request_id', ''))[:12]} · key {entry.get('key_id')} · "
            f"{entry.get('n')} sample(s) · {entry.get('verdict')}"
            + (f" · ticket {entry['ticket']}" if entry.get("ticket") else "")
        )
    if kind == "review":
        return (
            f"ticket {entry.get('ticket')} {entry.get('action')} by key "
            f"{entry.get('reviewer_key_id')}" + (f": {entry['note']}" if entry.get("note") else "")
        )
    if kind == "block":
        return (
            f"client {entry.get('client_key_id')} block {entry.get('action')} "
            f"(by key {entry.get('by_key_id')})"
        )
    if kind == "escalation":
        return f"ticket {entry.get('ticket')} escalated after {entry.get('after_s')} s"
    if kind == "key":
        return f"key {entry.get('key_id')} {entry.get('action')} (by key {entry.get('by_key_id')})"
    return ", ".join(f"{k}={v}" for k, v in entry.items() if k != "kind")[:200]


async def _audit_page(
    request: Request, user: DashboardUser, *, report: api.VerifyReport | None = None
) -> HTMLResponse:
    key = await key_of(request, user)
    try:
        head = await api.tree_head(request, key)
        start = max(0, head.tree_size - ENTRIES_SHOWN)
        rows = await api.entries(request, key, start, ENTRIES_SHOWN)
    except HTTPException as exc:  # the audit log is disabled
        return error_page(request, user, exc.status_code, "Audit", str(exc.detail))
    entries = [EntryRow(r.index, str(r.entry.get("kind", "?")), summary(r.entry)) for r in rows]
    return page(
        request,
        "audit.html.j2",
        user=user,
        head=head,
        entries=list(reversed(entries)),
        report=report,
        can_verify=user.is_admin,
    )


@router.get("/audit", response_class=HTMLResponse)
async def audit(request: Request, user: Viewer) -> HTMLResponse:
    return await _audit_page(request, user)


@router.post("/audit/verify", response_class=HTMLResponse)
async def verify_now(request: Request, user: Admin) -> HTMLResponse:
    await checked_form(request, user)
    report = await api.verify(request, await key_of(request, user))
    return await _audit_page(request, user, report=report)


@router.get("/audit/entries/{index}", response_class=HTMLResponse)
async def entry(
    request: Request,
    index: Annotated[int, Path(ge=0, le=STORE_INT_MAX)],
    user: Viewer,
    size: Annotated[int | None, store_int_query("tree size (default: the log's)", ge=1)] = None,
) -> Response:
    key = await key_of(request, user)
    try:
        proof = await api.inclusion(request, key, index, size)
    except HTTPException as exc:
        return error_page(request, user, exc.status_code, "Audit entry", str(exc.detail))
    ok = verify_inclusion(
        bytes.fromhex(proof.leaf_hash),
        proof.index,
        proof.tree_size,
        [bytes.fromhex(h) for h in proof.audit_path],
        bytes.fromhex(proof.root_hash),
    )
    return page(
        request,
        "audit_entry.html.j2",
        user=user,
        proof=proof,
        entry_json=json.dumps(proof.entry, indent=2, sort_keys=True),
        kind=proof.entry.get("kind", "?"),
        summary=summary(proof.entry),
        proof_ok=ok,
    )
