"""Token buckets: in process and through the real Redis; 429 with Retry-After."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from bastion.errors import ConfigError
from bastion.serve.ratelimit import BucketSpec, LocalRateLimiter, RedisRateLimiter
from bastion.serve.settings import ServeSettings, load_settings

REDIS_URL = "redis://127.0.0.1:6379/15"


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_local_bucket_bursts_refuses_and_refills():
    clock = Clock()
    rl = LocalRateLimiter({"requests": BucketSpec(rate=2.0, burst=3.0)}, clock=clock)
    assert [rl.take_now("k", "requests", 1).allowed for _ in range(3)] == [True] * 3
    refused = rl.take_now("k", "requests", 1)
    assert not refused.allowed and refused.retry_after_s == pytest.approx(0.5)
    assert refused.retry_after_header == "1"
    assert rl.take_now("other", "requests", 1).allowed  # buckets are per key
    clock.t += 0.5
    assert rl.take_now("k", "requests", 1).allowed
    clock.t += 100  # refill is capped at the burst
    assert [rl.take_now("k", "requests", 1).allowed for _ in range(4)] == [True] * 3 + [False]


def test_requests_over_the_rate_answer_429_with_retry_after(settings, gateway_factory, sample):
    tight = settings.model_copy(
        update={
            "rate_limit": settings.rate_limit.model_copy(
                update={"requests_per_s": 0.01, "requests_burst": 3}
            )
        }
    )
    with gateway_factory(tight) as gw:
        codes = [
            gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth()).status_code
            for _ in range(4)
        ]
        assert codes == [200, 200, 200, 429]
        r = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 60
        assert "rate limit on requests exceeded" in r.json()["detail"]
        other = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth("client2"))
        assert other.status_code == 200  # another key has its own bucket
        assert 'bastion_rate_limited_total{bucket="requests"} 2.0' in gw.client.get("/metrics").text


def test_samples_bucket_counts_the_batch(settings, gateway_factory, sample):
    tight = settings.model_copy(
        update={
            "rate_limit": settings.rate_limit.model_copy(
                update={"samples_per_s": 0.01, "samples_burst": 5}
            ),
            "limits": settings.limits.model_copy(update={"max_batch": 4}),
        }
    )
    with gateway_factory(tight) as gw:
        ok = gw.client.post("/v1/predict", json={"inputs": [sample] * 4}, headers=gw.auth())
        assert ok.status_code == 200
        r = gw.client.post("/v1/predict", json={"inputs": [sample] * 2}, headers=gw.auth())
        assert r.status_code == 429 and "samples" in r.json()["detail"]
        assert (
            gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth()).status_code
            == 200
        )


def test_samples_burst_below_max_batch_is_a_config_error():
    with pytest.raises(
        ConfigError, match=r"rate_limit.samples_burst \(10\) is below limits.max_batch \(64\)"
    ):
        load_settings(None, rate_limit={"samples_burst": 10})
    assert ServeSettings(rate_limit={"enabled": False, "samples_burst": 10}).limits.max_batch == 64


def _redis_or_skip() -> None:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"Redis at {REDIS_URL} unreachable: {exc}")


@pytest.mark.redis
def test_redis_buckets_are_shared_between_replicas():
    _redis_or_skip()
    spec = {"requests": BucketSpec(rate=0.01, burst=3.0)}
    prefix = f"bastion-test:{uuid.uuid4().hex}"

    async def scenario():
        a = RedisRateLimiter(REDIS_URL, spec, prefix=prefix)
        b = RedisRateLimiter(REDIS_URL, spec, prefix=prefix)  # a second replica
        try:
            await a.ping()
            got = [(await (a if i % 2 else b).take("k1", "requests", 1)) for i in range(4)]
            other = await b.take("k2", "requests", 1)
            many = await asyncio.gather(*[a.take("k3", "requests", 1) for _ in range(10)])
            return got, other, many
        finally:
            await a.aclose()
            await b.aclose()

    got, other, many = asyncio.run(scenario())
    assert [d.allowed for d in got] == [True, True, True, False]
    assert got[-1].retry_after_s == pytest.approx(100, rel=0.05)
    assert other.allowed
    assert sum(d.allowed for d in many) == 3  # atomic under concurrency: exactly the burst


@pytest.mark.redis
def test_redis_rate_limit_through_the_gateway(settings, gateway_factory, sample):
    _redis_or_skip()
    import redis

    shared = settings.model_copy(
        update={
            "redis_url": REDIS_URL,
            "rate_limit": settings.rate_limit.model_copy(
                update={"requests_per_s": 0.01, "requests_burst": 2}
            ),
        }
    )
    with gateway_factory(shared) as gw:
        assert gw.client.get("/healthz").json()["rate_limit"] == "redis"
        codes = [
            gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth()).status_code
            for _ in range(3)
        ]
        assert codes == [200, 200, 429]
    redis.Redis.from_url(REDIS_URL).delete(
        f"bastion:rl:{gw.ids['client']}:requests", f"bastion:rl:{gw.ids['client']}:samples"
    )


@pytest.mark.redis
def test_unreachable_redis_fails_at_start_and_denies_at_run_time():
    async def scenario():
        dead = RedisRateLimiter("redis://127.0.0.1:1/0", {"requests": BucketSpec(1, 1)})
        with pytest.raises(ConfigError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
            await dead.ping()
        decision = await dead.take("k", "requests", 1)
        await dead.aclose()
        return decision

    decision = asyncio.run(scenario())
    assert not decision.allowed and decision.bucket == "unavailable"
