"""GroupCommitter: concurrent submissions share transactions, and each resolves with its
own index only after its batch has committed."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bastion.audit import AuditLog, GroupCommitter
from bastion.errors import ConfigError, StoreError


class SlowLog:
    """Wraps a log, recording each batch and holding commits until released."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.batches: list[int] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail = False

    def append_encoded(self, blobs):
        self.gate.wait(10)
        if self.fail:
            raise StoreError("disk full")
        self.batches.append(len(blobs))
        return self.log.append_encoded(blobs)


def run(coro):
    return asyncio.run(coro)


def test_concurrent_submits_are_batched_and_each_gets_its_index(sqlite_url):
    log = AuditLog.open(sqlite_url)
    slow = SlowLog(log)

    async def main():
        gc = GroupCommitter(slow, max_batch=64, max_delay_ms=5)  # type: ignore[arg-type]
        await gc.start()
        indices = await asyncio.gather(*[gc.submit({"n": n}) for n in range(300)])
        await gc.stop()
        return gc, indices

    gc, indices = run(main())
    assert sorted(indices) == list(range(300))
    for n, index in enumerate(indices):  # every waiter got the index of its own entry
        assert log.entry(index) == {"n": n}
    assert sum(slow.batches) == 300 and max(slow.batches) == 64
    assert len(slow.batches) <= 8  # batched, not one transaction each
    assert gc.batches == len(slow.batches) and gc.committed == 300
    result = log.verify(integrity_only=True)  # an unsigned log: the hash chain only
    assert result.ok and result.size == 300 and not result.signatures_checked


def test_nothing_resolves_before_its_commit(sqlite_url):
    log = AuditLog.open(sqlite_url)
    slow = SlowLog(log)
    slow.gate.clear()  # commits block

    async def main():
        gc = GroupCommitter(slow, max_batch=8, max_delay_ms=0)  # type: ignore[arg-type]
        await gc.start()
        tasks = [asyncio.create_task(gc.submit({"n": n})) for n in range(20)]
        await asyncio.sleep(0.1)
        assert not any(t.done() for t in tasks)  # the commit has not happened yet
        assert log.size() == 0
        slow.gate.set()
        indices = await asyncio.gather(*tasks)
        await gc.stop()
        return indices

    assert sorted(run(main())) == list(range(20))


def test_entries_arriving_during_a_commit_form_the_next_batch(sqlite_url):
    log = AuditLog.open(sqlite_url)
    slow = SlowLog(log)

    async def main():
        gc = GroupCommitter(slow, max_batch=512, max_delay_ms=0)  # type: ignore[arg-type]
        await gc.start()
        slow.gate.clear()
        first = asyncio.create_task(gc.submit({"n": 0}))
        await asyncio.sleep(0.05)  # the first entry's commit is now in flight (blocked)
        rest = [asyncio.create_task(gc.submit({"n": n})) for n in range(1, 50)]
        await asyncio.sleep(0.05)
        slow.gate.set()
        await asyncio.gather(first, *rest)
        await gc.stop()

    run(main())
    assert slow.batches == [1, 49]


def test_a_bad_entry_fails_alone_and_a_failed_commit_fails_its_batch(sqlite_url):
    log = AuditLog.open(sqlite_url)
    slow = SlowLog(log)

    async def main():
        gc = GroupCommitter(slow, max_batch=16, max_delay_ms=1)  # type: ignore[arg-type]
        await gc.start()
        good = asyncio.create_task(gc.submit({"ok": 1}))
        with pytest.raises(ConfigError, match="not canonical JSON"):
            await gc.submit({"bad": float("inf")})
        assert await good == 0
        slow.fail = True
        results = await asyncio.gather(
            *[gc.submit({"n": n}) for n in range(5)], return_exceptions=True
        )
        assert all(isinstance(r, StoreError) and "disk full" in str(r) for r in results)
        slow.fail = False
        assert await gc.submit({"after": 1}) == 1  # the committer keeps working
        await gc.stop()

    run(main())
    assert log.size() == 2


def test_stop_commits_pending_and_submit_after_stop_is_refused(sqlite_url):
    log = AuditLog.open(sqlite_url)

    async def main():
        gc = GroupCommitter(log, max_batch=4, max_delay_ms=50)
        await gc.start()
        tasks = [asyncio.create_task(gc.submit({"n": n})) for n in range(10)]
        await asyncio.sleep(0)
        await gc.stop()
        assert all(t.done() for t in tasks)
        with pytest.raises(StoreError, match="not running"):
            await gc.submit({"late": 1})

    run(main())
    assert log.size() == 10


def test_bad_parameters():
    with pytest.raises(ConfigError, match="max_batch"):
        GroupCommitter(None, max_batch=0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="max_delay_ms"):
        GroupCommitter(None, max_delay_ms=-1)  # type: ignore[arg-type]
