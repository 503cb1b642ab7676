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
