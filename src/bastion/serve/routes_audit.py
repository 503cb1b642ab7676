"""``/v1/audit``: read and prove the tamper-evident audit log (reviewer or admin).

* ``GET /v1/audit/entries?start=0&limit=100`` — entries in log order, with their index;
* ``GET /v1/audit/tree-head`` — current size and RFC 6962 root, and the latest signed head;
* ``POST /v1/audit/tree-head`` — sign a head now (admin; needs the audit signing key);
* ``GET /v1/audit/proof/inclusion?index=I[&size=N]`` — audit path of entry I in tree N;
* ``GET /v1/audit/proof/consistency?first=M[&second=N]`` — tree M is a prefix of tree N;
* ``GET /v1/audit/verify`` — re-hash the whole log and check every signed head (admin)
  against the gateway's own configured signing key (``audit.key_file`` /
  ``$BASTION_AUDIT_KEY``), never the key recorded in the database; a gateway without a
  signing key checks integrity only and answers ``signatures_checked: false``.

Hashes are hex; a client checks proofs with :func:`bastion.audit.verify_inclusion` /
:func:`bastion.audit.verify_consistency` (or ``bastion audit prove``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from fastapi import APIRouter, HTTPException, Request, status
from pydantic import BaseModel, Field

from bastion.audit import AuditLog, leaf_hash
from bastion.audit.sth import SignedTreeHead
from bastion.errors import ConfigError
from bastion.serve.auth import AdminKey, ReviewerKey
from bastion.serve.deps import AUTH_ERRORS
from bastion.serve.errors import error_responses
from bastion.serve.params import PageLimit, store_int_query

router = APIRouter(prefix="/v1/audit", tags=["audit"])
T = TypeVar("T")
_DISABLED = {404: "the audit log is disabled"}
_OUTSIDE = {404: "the audit log is disabled, or the index or size lies outside the log"}
_READ = error_responses(*AUTH_ERRORS, 404, 422, describe=_OUTSIDE)


class AuditEntry(BaseModel):
    index: int
    entry: dict[str, Any]


class SignedHead(BaseModel):
    """A tree head signed with the audit key (Ed25519 over size, timestamp and root)."""

    tree_size: int
    timestamp_ms: int
    root_hash: str
    signature: str = Field(description="base64 Ed25519 signature")
    key_id: str

    @classmethod
    def of(cls, head: SignedTreeHead) -> SignedHead:
        return cls.model_validate(head.to_dict())


class TreeHead(BaseModel):
    tree_size: int
    root_hash: str
    signed: SignedHead | None = Field(description="the latest signed head, if any")


class InclusionProof(BaseModel):
    index: int
    tree_size: int
    entry: dict[str, Any]
    leaf_hash: str
    root_hash: str
    audit_path: list[str]


class ConsistencyProof(BaseModel):
    first: int
    second: int
    first_root: str
    second_root: str
    proof: list[str]


class VerifyReport(BaseModel):
    ok: bool = Field(description="no problem found by the checks that ran")
    signatures_checked: bool = Field(
        description="false: integrity only (the gateway has no signing key), nothing authenticated"
    )
    size: int
    root_hash: str
    heads_checked: int
    trusted_size: int = Field(description="leading entries that match a verified signed head")
    first_bad_index: int | None
    message: str
    problems: list[str]
    seconds: float


def _log(request: Request) -> AuditLog:
    audit_log = request.app.state.audit.log
    if audit_log is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail="the audit log is disabled")
    return audit_log


async def _call(fn: Callable[..., T], *args: Any) -> T:
    """Run a blocking log call in a thread; an index or size the log does not have is 404
    (a store failure stays a server error)."""
    try:
        return await anyio.to_thread.run_sync(fn, *args)
    except ConfigError as exc:  # the log's own range checks
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None


@router.get(
    "/entries",
    response_model=list[AuditEntry],
    responses=error_responses(*AUTH_ERRORS, 404, 422, describe=_DISABLED),
)
async def entries(
    request: Request,
    _key: ReviewerKey,
    start: Annotated[int, store_int_query("index of the first entry")] = 0,
    limit: PageLimit = 100,
) -> list[AuditEntry]:
    """Entries ``start`` .. ``start + limit - 1`` that the log holds (none past its end)."""
    audit_log = _log(request)

    def read() -> list[dict[str, Any]]:
        stop = min(start + limit, audit_log.size())
        return audit_log.entries(start, stop) if start < stop else []

    rows = await _call(read)
    return [AuditEntry(index=start + i, entry=e) for i, e in enumerate(rows)]


def _head(audit_log: AuditLog) -> TreeHead:
    size = audit_log.size()
    latest = audit_log.latest_head()
    return TreeHead(
        tree_size=size,
        root_hash=audit_log.root(size).hex(),
        signed=SignedHead.of(latest) if latest is not None else None,
    )


@router.get(
    "/tree-head",
    response_model=TreeHead,
    responses=error_responses(*AUTH_ERRORS, 404, describe=_DISABLED),
)
async def tree_head(request: Request, _key: ReviewerKey) -> TreeHead:
    return await _call(_head, _log(request))


@router.post(
    "/tree-head",
    status_code=201,
    response_model=SignedHead,
    responses=error_responses(
        *AUTH_ERRORS, 404, 409, describe={**_DISABLED, 409: "no audit signing key"}
    ),
)
async def sign_tree_head(request: Request, _key: AdminKey) -> SignedHead:
    audit_log = _log(request)
    if audit_log.signing_key is None:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            detail="no audit signing key: set audit.key_file or $BASTION_AUDIT_KEY",
        )
    return SignedHead.of(await _call(audit_log.sign_tree_head))


@router.get("/proof/inclusion", response_model=InclusionProof, responses=_READ)
async def inclusion(
    request: Request,
    _key: ReviewerKey,
    index: Annotated[int, store_int_query("the entry's index")],
    size: Annotated[int | None, store_int_query("tree size (default: the whole log)", ge=1)] = None,
) -> InclusionProof:
    audit_log = _log(request)

    def prove() -> InclusionProof:
        n = audit_log.size() if size is None else size
        path = audit_log.inclusion_proof(index, n)
        return InclusionProof(
            index=index,
            tree_size=n,
            entry=audit_log.entry(index),
            leaf_hash=leaf_hash(audit_log.entry_bytes(index)).hex(),
            root_hash=audit_log.root(n).hex(),
            audit_path=[h.hex() for h in path],
        )

    return await _call(prove)


@router.get("/proof/consistency", response_model=ConsistencyProof, responses=_READ)
async def consistency(
    request: Request,
    _key: ReviewerKey,
    first: Annotated[int, store_int_query("the older tree size")],
    second: Annotated[
        int | None, store_int_query("the newer tree size (default: the log's)")
    ] = None,
) -> ConsistencyProof:
    audit_log = _log(request)

    def prove() -> ConsistencyProof:
        n = audit_log.size() if second is None else second
        proof = audit_log.consistency_proof(first, n)
        return ConsistencyProof(
            first=first,
            second=n,
            first_root=audit_log.root(first).hex(),
            second_root=audit_log.root(n).hex(),
            proof=[h.hex() for h in proof],
        )

    return await _call(prove)


@router.get(
    "/verify",
    response_model=VerifyReport,
    responses=error_responses(*AUTH_ERRORS, 404, describe=_DISABLED),
)
async def verify(request: Request, _key: AdminKey) -> VerifyReport:
    """Re-hash every entry and check the signed heads with the gateway's signing key (cost
    grows with the log); without a signing key, integrity only (``signatures_checked``)."""
    audit_log = _log(request)
    result = await _call(partial(audit_log.verify, integrity_only=audit_log.signing_key is None))
    return VerifyReport(
        ok=result.ok,
        signatures_checked=result.signatures_checked,
        size=result.size,
        root_hash=result.root.hex(),
        heads_checked=result.heads_checked,
        trusted_size=result.trusted_size,
        first_bad_index=result.first_bad_index,
        message=result.message,
        problems=list(result.problems),
        seconds=round(result.seconds, 4),
    )
