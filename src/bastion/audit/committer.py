"""Group commit for asyncio servers: concurrent ``submit`` calls are gathered into one
transaction, and each resolves with its entry's index only after that transaction has
committed (so nothing is acknowledged before it is durable).

The worker commits as soon as the first entry waits (after at most ``max_delay_ms`` for
company when idle); entries that arrive while a commit is in flight form the next batch,
so under load batches grow by themselves up to ``max_batch`` without adding latency.
The commit runs in a worker thread, leaving the event loop free.

    committer = GroupCommitter(log)
    await committer.start()
    index = await committer.submit({"event": "predict", ...})
    await committer.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from bastion.audit.log import AuditLog, canonical_json
from bastion.errors import ConfigError, StoreError

log = logging.getLogger(__name__)


class GroupCommitter:
    """Batches concurrent :meth:`submit` calls into :meth:`AuditLog.append_encoded`."""

    def __init__(self, log: AuditLog, *, max_batch: int = 512, max_delay_ms: float = 2.0) -> None:
        if max_batch < 1:
            raise ConfigError("max_batch must be ≥ 1")
        if max_delay_ms < 0:
            raise ConfigError("max_delay_ms must be ≥ 0")
        self.log = log
        self.max_batch = max_batch
        self.max_delay_ms = max_delay_ms
        self._pending: list[tuple[bytes, asyncio.Future[int]]] = []
        self._wake: asyncio.Event | None = None
        self._full: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._stopping = False
        self.batches = 0  # committed transactions
        self.committed = 0  # committed entries

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    async def start(self) -> None:
        if self.running:
            return
        self._wake, self._full = asyncio.Event(), asyncio.Event()
        self._stopping = False
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-commit")
        self._task = asyncio.create_task(self._run(), name="audit-group-commit")

    async def stop(self) -> None:
        """Commit what is pending, then stop the worker."""
        if self._task is None:
            return
        self._stopping = True
        assert self._wake is not None
        self._wake.set()
        try:
            await self._task
        finally:
            self._task = None
            if self._executor is not None:
                self._executor.shutdown(wait=True)
                self._executor = None

    async def submit(self, entry: dict[str, Any]) -> int:
        """Queue an entry; returns its index once the batch holding it has committed.
        Raises ConfigError for an entry that is not JSON, StoreError if the commit failed."""
        if not self.running or self._stopping:
            raise StoreError("the audit group committer is not running: await start() first")
        blob = canonical_json(entry)  # a bad entry fails alone, not its whole batch
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append((blob, fut))
        assert self._wake is not None and self._full is not None
        self._wake.set()
        if len(self._pending) >= self.max_batch:
            self._full.set()
        return await fut

    async def _run(self) -> None:
        assert self._wake is not None and self._full is not None
        loop = asyncio.get_running_loop()
        just_committed = False
        while True:
            if not self._pending:
                if self._stopping:
                    return
                self._wake.clear()
                await self._wake.wait()
                just_committed = False
                continue
            idle = not just_committed and self.max_delay_ms > 0 and not self._stopping
            if idle and len(self._pending) < self.max_batch:
                # idle until now: give concurrent requests a moment to join this batch
                self._full.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._full.wait(), self.max_delay_ms / 1000)
            batch = self._pending[: self.max_batch]
            del self._pending[: self.max_batch]
            if len(self._pending) < self.max_batch:
                self._full.clear()
            try:
                indices = await loop.run_in_executor(
                    self._executor, self.log.append_encoded, [b for b, _ in batch]
                )
            except Exception as exc:  # every waiter of this batch learns of the failure
                log.error("audit group commit of %d entries failed: %s", len(batch), exc)
                err = (
                    exc
                    if isinstance(exc, StoreError)
                    else StoreError(f"audit commit failed: {exc}")
                )
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(err)
            else:
                self.batches += 1
                self.committed += len(batch)
                for (_, fut), index in zip(batch, indices, strict=True):
                    if not fut.done():
                        fut.set_result(index)
            just_committed = True
