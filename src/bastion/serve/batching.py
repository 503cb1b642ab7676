"""Dynamic micro-batching: concurrent predict requests share one model and guard pass.

Requests queue while a pass runs; the next pass takes everything waiting (up to
``max_samples`` samples). Nothing waits for company: an idle server runs a lone request at
once, so batching adds no latency at one connection and grows by itself under load (the
same rule as the audit log's group commit). Small passes run on the event loop, larger
ones in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import anyio.to_thread
import torch

from bastion.serve.runtime import Inference, Runtime

log = logging.getLogger(__name__)


class MicroBatcher:
    def __init__(self, runtime: Runtime, *, max_samples: int = 64, inline_max_samples: int = 8):
        self.runtime = runtime
        self.max_samples = max_samples
        self.inline_max_samples = inline_max_samples
        self._pending: list[tuple[torch.Tensor, str, asyncio.Future[Inference]]] = []
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # model/guard passes run
        self.requests = 0  # requests served by them

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="predict-micro-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for _, _, fut in self._pending:
            if not fut.done():
                fut.set_exception(RuntimeError("the server is shutting down"))
        self._pending.clear()

    async def infer(self, x: torch.Tensor, client_id: str) -> Inference:
        """The model's and guard's answer for one request (queued with its neighbours)."""
        if self._task is None or self._wake is None:
            raise RuntimeError("MicroBatcher.start() was not awaited")
        fut: asyncio.Future[Inference] = asyncio.get_running_loop().create_future()
        self._pending.append((x, client_id, fut))
        self._wake.set()
        return await fut

    def _take(self) -> list[tuple[torch.Tensor, str, asyncio.Future[Inference]]]:
        batch, total = [], 0
        while self._pending:
            n = int(self._pending[0][0].shape[0])
            if batch and total + n > self.max_samples:
                break
            batch.append(self._pending.pop(0))
            total += n
        return batch

    async def _run(self) -> None:
        wake = self._wake
        if wake is None:
            return
        while True:
            await wake.wait()
            wake.clear()
            while self._pending:
                batch = self._take()
                requests = [(x, client) for x, client, _ in batch]
                total = sum(int(x.shape[0]) for x, _ in requests)
                try:
                    if total <= self.inline_max_samples:
                        results = self.runtime.infer_many(requests)
                    else:
                        results = await anyio.to_thread.run_sync(self.runtime.infer_many, requests)
                except Exception as exc:  # every request of the pass learns of it
                    log.exception("predict pass of %d requests failed", len(batch))
                    results = [exc] * len(batch)
                self.passes += 1
                self.requests += len(batch)
                for (_, _, fut), result in zip(batch, results, strict=True):
                    if fut.done():  # the client went away
                        continue
                    if isinstance(result, Exception):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
                await asyncio.sleep(0)  # let handlers that became ready join the next pass
