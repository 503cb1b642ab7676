"""Micro-batching: concurrent requests share passes, answers stay with their requests, the
guard sees each client's samples separately and in order."""

from __future__ import annotations

import asyncio

import pytest
import torch

from bastion.models.io import load_model
from bastion.serve.batching import MicroBatcher
from bastion.serve.runtime import Runtime
from tests.serve.conftest import ScriptedGuard


@pytest.fixture()
def runtime(digits_model_dir) -> Runtime:
    loaded = load_model(digits_model_dir)
    return Runtime(loaded, sample_shape=(1, 8, 8), bounds=(0.0, 1.0))


def _run(batcher: MicroBatcher, requests):
    async def go():
        await batcher.start()
        try:
            return await asyncio.gather(
                *[batcher.infer(x, c) for x, c in requests], return_exceptions=True
            )
        finally:
            await batcher.stop()

    return asyncio.run(go())


def test_concurrent_requests_share_passes_and_keep_their_answers(runtime, digits):
    x = digits.test.x[:40]
    requests = [(x[i : i + 1 + i % 3], f"c{i % 4}") for i in range(0, 16)]
    batcher = MicroBatcher(runtime, max_samples=8, inline_max_samples=4)
    results = _run(batcher, requests)
    assert batcher.requests == len(requests) and batcher.passes < len(requests)
    with torch.inference_mode():
        for (xi, _), res in zip(requests, results, strict=True):
            expected = torch.softmax(runtime.module(xi), 1)
            assert torch.allclose(res.probabilities, expected, atol=1e-5)
            assert res.predictions == expected.argmax(1).tolist()


def test_guard_is_called_once_per_client_in_arrival_order(runtime, digits):
    guard = ScriptedGuard(runtime.module)
    runtime.guard = guard
    x = digits.test.x[:6].clone()
    x[4].view(-1)[0] = 0.25  # the scripted guard holds this one
    requests = [(x[i : i + 1], ["a", "b", "a"][i % 3]) for i in range(6)]
    results = _run(MicroBatcher(runtime, max_samples=64), requests)
    assert guard.calls == ["a", "b"]  # one pass, one guard call per client
    assert [r.verdict for r in results] == ["allow"] * 4 + ["hold", "allow"]


def test_a_failing_client_fails_alone(runtime, digits):
    class Flaky(ScriptedGuard):
        def predict_and_inspect(self, x, client_id):
            if client_id == "bad":
                raise ValueError("boom")
            return super().predict_and_inspect(x, client_id)

    runtime.guard = Flaky(runtime.module)
    x = digits.test.x[:4]
    results = _run(
        MicroBatcher(runtime), [(x[i : i + 1], "bad" if i == 2 else "ok") for i in range(4)]
    )
    assert isinstance(results[2], ValueError)
    assert all(r.verdict == "allow" for i, r in enumerate(results) if i != 2)


def test_infer_before_start_is_an_error(runtime, digits):
    with pytest.raises(RuntimeError, match=r"MicroBatcher.start\(\) was not awaited"):
        asyncio.run(MicroBatcher(runtime).infer(digits.test.x[:1], "c"))


def _waves(batcher: MicroBatcher, x: torch.Tensor, *, pause_s: float) -> list[int]:
    """Four concurrent requests, then the next four as a loaded server sees them: one
    first, the other three a moment later; then, after ``pause_s``, a lone request.
    Returns the requests of each pass."""
    sizes: list[int] = []
    batcher.on_pass = sizes.append

    async def go() -> float:
        await batcher.start()
        try:
            await asyncio.gather(*[batcher.infer(x[i : i + 1], f"c{i}") for i in range(4)])

            async def late(i: int) -> None:
                await asyncio.sleep(0.005)
                await batcher.infer(x[i : i + 1], f"c{i}")

            await asyncio.gather(batcher.infer(x[4:5], "c0"), *[late(i) for i in (5, 6, 7)])
            await asyncio.sleep(pause_s)
            start = asyncio.get_running_loop().time()
            await batcher.infer(x[8:9], "c1")
            return asyncio.get_running_loop().time() - start
        finally:
            await batcher.stop()

    lone = asyncio.run(go())
    sizes.append(round(lone * 1000))  # the lone request's latency, ms, last
    return sizes


def test_under_steady_load_a_pass_waits_for_the_company_the_last_one_had(runtime, digits):
    x = digits.test.x[:9]
    waiting = MicroBatcher(runtime, max_wait_s=0.2, busy_window_s=0.1)
    *passes, lone_ms = _waves(waiting, x, pause_s=0.3)
    assert passes == [4, 4, 1]  # the second wave waited for its late three
    assert lone_ms < 100  # after a pause longer than the busy window: no wait
    eager = MicroBatcher(runtime, max_wait_s=0.0)
    *passes, _ = _waves(eager, x, pause_s=0.0)
    assert passes[:2] == [4, 1]  # without the rule the first of the wave went alone
