"""Dynamic micro-batching: concurrent predict requests share one model and guard pass.

Requests queue while a pass runs; the next pass takes everything waiting (up to
``max_samples`` samples). An idle server runs a lone request at once, so batching adds no
latency at one connection. Under steady load a pass expects the company the previous one
had: when that pass ended less than ``busy_window_s`` ago and served more requests than now
wait, the next waits up to ``max_wait_s`` for them. Without that rule the clients' next
requests, whose answers leave one after another, were split into a pass of one and a pass
of the rest (at 8 connections passes held 2.9 requests on average; see
docs/benchmarks/serving.md). Small passes run on the event loop, larger ones in a worker
thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import anyio.to_thread
import torch

from bastion.serve.runtime import Inference, Runtime

log = logging.getLogger(__name__)


class MicroBatcher:
    def __init__(
        self,
        runtime: Runtime,
        *,
        max_samples: int = 64,
        inline_max_samples: int = 8,
        max_wait_s: float = 0.002,
        busy_window_s: float = 0.02,
        on_pass: Callable[[int], object] | None = None,
    ) -> None:
        self.runtime = runtime
        self.max_samples = max_samples
        self.inline_max_samples = inline_max_samples
        self.max_wait_s = max_wait_s
        self.busy_window_s = busy_window_s
        self.on_pass = on_pass  # called with each pass's number of requests
        self._pending: list[tuple[torch.Tensor, str, asyncio.Future[Inference]]] = []
        self._wake: asyncio.Event | None = None
        self._company: asyncio.Event | None = None  # set when a request queues
        self._last_size = 0  # requests in the previous pass
        self._last_end = float("-inf")  # when it ended (time.monotonic)
        self._task: asyncio.Task[None] | None = None
        self.passes = 0  # model/guard passes run
        self.requests = 0  # requests served by them

    async def start(self) -> None:
        self._wake = asyncio.Event()
        self._company = asyncio.Event()
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
        if self._company is not None:  # set with _wake by start()
            self._company.set()
        return await fut

    def _samples(self) -> int:
        return sum(int(x.shape[0]) for x, _, _ in self._pending)

    async def _gather(self) -> None:
        """Under steady load, wait (at most ``max_wait_s``) until as many requests queue as
        the previous pass served, or ``max_samples`` samples."""
        company = self._company
        expected = self._last_size
        if (
            company is None
            or self.max_wait_s <= 0
            or len(self._pending) >= expected
            or time.monotonic() - self._last_end > self.busy_window_s
        ):
            return
        deadline = time.monotonic() + self.max_wait_s
        while len(self._pending) < expected and self._samples() < self.max_samples:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            company.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(company.wait(), left)

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
                await self._gather()
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
                self._last_size, self._last_end = len(batch), time.monotonic()
                if self.on_pass is not None:
                    self.on_pass(len(batch))
                for (_, _, fut), result in zip(batch, results, strict=True):
                    if fut.done():  # the client went away
                        continue
                    if isinstance(result, Exception):
                        fut.set_exception(result)
                    else:
                        fut.set_result(result)
                await asyncio.sleep(0)  # let handlers that became ready join the next pass
