"""The gateway's one door to the audit log (:mod:`bastion.audit`).

``await sink.submit(entry)`` returns the entry's index only once the entry is durable: it
goes through the log's :class:`~bastion.audit.GroupCommitter`, which gathers concurrent
submissions into one transaction (group commit) and resolves each after that transaction
has committed. A route that awaits it before answering never acknowledges an unlogged
request. ``audit.enabled: false`` swaps in :class:`NullAuditSink` (benchmarks only).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any, Protocol

from bastion.audit import AuditLog, GroupCommitter, resolve_signing_key

log = logging.getLogger(__name__)


class AuditSink(Protocol):
    log: AuditLog | None

    async def submit(self, entry: dict[str, Any]) -> int: ...

    async def aclose(self) -> None: ...


def clean(value: Any) -> Any:
    """Make an entry canonical-JSON safe: non-finite floats become strings ("inf", "nan")."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    return value


class CommitterSink:
    """The tamper-evident log behind a group committer."""

    def __init__(self, audit_log: AuditLog, committer: GroupCommitter) -> None:
        self.log = audit_log
        self.committer = committer

    async def submit(self, entry: dict[str, Any]) -> int:
        return await self.committer.submit(clean(entry))

    async def aclose(self) -> None:
        try:
            await self.committer.stop()  # commits what is pending first
        finally:
            self.log.close()


class NullAuditSink:
    """Drops entries (``audit.enabled: false``; for measuring the bare path only)."""

    log = None

    async def submit(self, entry: dict[str, Any]) -> int:
        return -1

    async def aclose(self) -> None:
        return None


def open_log(url: str, *, key_file: Path | None = None, checkpoint_every: int = 1000) -> AuditLog:
    """The audit log at ``url``, signing tree heads when a key is configured (``key_file``
    or ``$BASTION_AUDIT_KEY``)."""
    key = resolve_signing_key(key_file)
    if key is None:
        log.warning(
            "no audit signing key (audit.key_file or $BASTION_AUDIT_KEY): tree heads "
            "are not signed; entries are still hash-chained in the Merkle tree"
        )
    return AuditLog.open(url, signing_key=key, checkpoint_every=checkpoint_every)


async def open_audit(
    url: str,
    *,
    enabled: bool = True,
    key_file: Path | None = None,
    checkpoint_every: int = 1000,
    max_batch: int = 512,
    max_delay_ms: float = 0.0,
) -> AuditSink:
    """Open the log and start its group committer (call inside the running event loop)."""
    if not enabled:
        log.warning("audit disabled: decisions are NOT logged")
        return NullAuditSink()
    audit_log = open_log(url, key_file=key_file, checkpoint_every=checkpoint_every)
    committer = GroupCommitter(audit_log, max_batch=max_batch, max_delay_ms=max_delay_ms)
    await committer.start()
    return CommitterSink(audit_log, committer)


def append_sync(url: str, entry: dict[str, Any], *, key_file: Path | None = None) -> int:
    """Append one entry from a synchronous caller (the CLI's key changes); durable on return."""
    with AuditLog.open(url, signing_key=resolve_signing_key(key_file)) as audit_log:
        return audit_log.append(clean(entry))
