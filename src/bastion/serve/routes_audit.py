"""``/v1/audit``: read and prove the tamper-evident audit log (reviewer or admin).

* ``GET /v1/audit/entries?start=0&limit=100`` — entries in log order, with their index;
* ``GET /v1/audit/tree-head`` — current size and RFC 6962 root, and the latest signed head;
* ``POST /v1/audit/tree-head`` — sign a head now (admin; needs the audit signing key);
* ``GET /v1/audit/proof/inclusion?index=I[&size=N]`` — audit path of entry I in tree N;
* ``GET /v1/audit/proof/consistency?first=M[&second=N]`` — tree M is a prefix of tree N;
* ``GET /v1/audit/verify`` — re-hash the whole log and check every signed head (admin).

Hashes are hex; a client checks proofs with :func:`bastion.audit.verify_inclusion` /
:func:`bastion.audit.verify_consistency` (or ``bastion audit prove``).
"""

from __future__ import annotations

from typing import Annotated, Any

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Query, Request, status

from bastion.audit import AuditLog, leaf_hash
from bastion.errors import BastionError
from bastion.serve.auth import AdminKey, ReviewerKey

router = APIRouter(prefix="/v1/audit", tags=["audit"])


def _log(request: Request) -> AuditLog:
    audit_log = getattr(request.app.state.audit, "log", None)
    if audit_log is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="the audit log is disabled")
    return audit_log


async def _call(fn: Any, *args: Any) -> Any:
    """Run a blocking log call in a thread; a bad index or size is the caller's 422."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except BastionError as exc:
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_ENTITY, detail=str(exc)) from None


@router.get("/entries")
async def entries(
    request: Request, _key: ReviewerKey,
    start: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:  # fmt: skip
    audit_log = _log(request)
    rows = await _call(audit_log.entries, start, start + limit)
    return [{"index": start + i, "entry": e} for i, e in enumerate(rows)]


def _head(audit_log: AuditLog) -> dict[str, Any]:
    size = audit_log.size()
    latest = audit_log.latest_head()
    return {
        "tree_size": size, "root_hash": audit_log.root(size).hex(),
        "signed": latest.to_dict() if latest is not None else None,
    }  # fmt: skip


@router.get("/tree-head")
async def tree_head(request: Request, _key: ReviewerKey) -> dict[str, Any]:
    return await _call(_head, _log(request))


@router.post("/tree-head", status_code=201)
async def sign_tree_head(request: Request, _key: AdminKey) -> dict[str, Any]:
    audit_log = _log(request)
    if audit_log.signing_key is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail="no audit signing key: set audit.key_file or $BASTION_AUDIT_KEY",
        )
    head = await _call(audit_log.sign_tree_head)
    return head.to_dict()


@router.get("/proof/inclusion")
async def inclusion(
    request: Request, _key: ReviewerKey, index: Annotated[int, Query(ge=0)],
    size: Annotated[int | None, Query(ge=1)] = None,
) -> dict[str, Any]:  # fmt: skip
    audit_log = _log(request)

    def prove() -> dict[str, Any]:
        n = audit_log.size() if size is None else size
        path = audit_log.inclusion_proof(index, n)
        return {
            "index": index, "tree_size": n, "entry": audit_log.entry(index),
            "leaf_hash": leaf_hash(audit_log.entry_bytes(index)).hex(),
            "root_hash": audit_log.root(n).hex(), "audit_path": [h.hex() for h in path],
        }  # fmt: skip

    return await _call(prove)


@router.get("/proof/consistency")
async def consistency(
    request: Request, _key: ReviewerKey, first: Annotated[int, Query(ge=0)],
    second: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:  # fmt: skip
    audit_log = _log(request)

    def prove() -> dict[str, Any]:
        n = audit_log.size() if second is None else second
        proof = audit_log.consistency_proof(first, n)
        return {
            "first": first, "second": n, "first_root": audit_log.root(first).hex(),
            "second_root": audit_log.root(n).hex(), "proof": [h.hex() for h in proof],
        }  # fmt: skip

    return await _call(prove)


@router.get("/verify")
async def verify(request: Request, _key: AdminKey) -> dict[str, Any]:
    """Re-hash every entry and check the signed heads (cost grows with the log)."""
    result = await _call(_log(request).verify)
    return {
        "ok": result.ok, "size": result.size, "root_hash": result.root.hex(),
        "heads_checked": result.heads_checked, "first_bad_index": result.first_bad_index,
        "message": result.message, "problems": list(result.problems),
        "seconds": round(result.seconds, 4),
    }  # fmt: skip
