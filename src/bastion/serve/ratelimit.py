"""Token-bucket rate limits per API key, in process or shared through Redis.

Each key has two buckets: ``requests`` (cost 1 per call) and ``samples`` (cost = batch
size). A bucket holds at most ``burst`` tokens and refills at ``rate`` tokens per second;
a call that finds too few tokens is refused with the time until enough have refilled
(the ``Retry-After`` of the 429).

:class:`LocalRateLimiter` keeps the buckets in a dict (one process). :class:`RedisRateLimiter`
keeps them in Redis hashes updated by one Lua script, atomic on the server and timed by
the server's clock, so several gateway replicas share the same budget.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bastion.errors import ConfigError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BucketSpec:
    rate: float  # tokens per second
    burst: float  # capacity


@dataclass(frozen=True)
class RateDecision:
    allowed: bool
    retry_after_s: float = 0.0
    bucket: str = ""

    @property
    def retry_after_header(self) -> str:
        """Whole seconds, at least 1 (RFC 9110 ``Retry-After``)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class RateLimiter(Protocol):
    async def take(self, key: str, bucket: str, cost: float) -> RateDecision: ...

    async def aclose(self) -> None: ...


class LocalRateLimiter:
    """In-process token buckets (asyncio single thread: no lock needed)."""

    def __init__(
        self, buckets: dict[str, BucketSpec], *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.buckets = buckets
        self.clock = clock
        self._state: dict[tuple[str, str], list[float]] = {}

    def take_now(self, key: str, bucket: str, cost: float) -> RateDecision:
        spec = self.buckets[bucket]
        now = self.clock()
        state = self._state.get((key, bucket))
        if state is None:
            if len(self._state) > 100_000:  # keys come from the store, but stay bounded
                self._state.clear()
            state = self._state[(key, bucket)] = [spec.burst, now]
        tokens = min(spec.burst, state[0] + max(0.0, now - state[1]) * spec.rate)
        state[1] = now
        if cost <= tokens:
            state[0] = tokens - cost
            return RateDecision(True, 0.0, bucket)
        state[0] = tokens
        return RateDecision(False, (cost - tokens) / spec.rate, bucket)

    async def take(self, key: str, bucket: str, cost: float) -> RateDecision:
        return self.take_now(key, bucket, cost)

    async def aclose(self) -> None:
        self._state.clear()


# KEYS[1] = the bucket hash; ARGV = rate, burst, cost. Returns {allowed, retry_after_s}.
# Numbers travel as strings: Redis truncates Lua numbers to integers on the way back.
TOKEN_BUCKET_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local cost = tonumber(ARGV[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(s[1])
local ts = tonumber(s[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
tokens = math.min(burst, tokens + math.max(0, now - ts) * rate)
local allowed = 0
local retry = 0
if cost <= tokens then
  tokens = tokens - cost
  allowed = 1
else
  retry = (cost - tokens) / rate
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'ts', string.format('%.6f', now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, string.format('%.6f', retry)}
"""


class RedisRateLimiter:
    """Token buckets in Redis, shared by every replica that uses the same ``prefix``."""

    def __init__(
        self,
        url: str,
        buckets: dict[str, BucketSpec],
        *,
        prefix: str = "bastion:rl",
        on_error: str = "deny",
    ) -> None:
        try:
            import redis.asyncio as aioredis
        except ImportError:  # pragma: no cover - redis is in the `scale` extra
            raise ConfigError(
                "--redis-url needs the redis package: pip install 'bastion-ml[scale]'"
            ) from None
        self.url = url
        self.buckets = buckets
        self.prefix = prefix
        self.on_error = on_error
        try:
            self._client = aioredis.Redis.from_url(url, socket_timeout=2.0)
        except ValueError as exc:
            raise ConfigError(f"bad --redis-url {url!r}: {exc}") from None
        self._script = self._client.register_script(TOKEN_BUCKET_LUA)

    async def ping(self) -> None:
        """Fail fast at start-up when Redis cannot be reached."""
        try:
            await self._client.ping()
        except Exception as exc:  # redis raises ConnectionError, TimeoutError, ...
            raise ConfigError(f"cannot reach Redis at {self.url}: {exc}") from None

    async def take(self, key: str, bucket: str, cost: float) -> RateDecision:
        spec = self.buckets[bucket]
        try:
            allowed, retry = await self._script(
                keys=[f"{self.prefix}:{key}:{bucket}"], args=[spec.rate, spec.burst, cost]
            )
        except Exception as exc:  # a Redis outage must not become a 500
            log.error(
                "rate limiter: Redis call failed (%s); policy on_redis_error=%s", exc, self.on_error
            )
            if self.on_error == "allow":
                return RateDecision(True, 0.0, bucket)
            return RateDecision(False, 1.0, "unavailable")
        return RateDecision(bool(int(allowed)), float(retry), bucket)

    async def aclose(self) -> None:
        await self._client.aclose()


def make_rate_limiter(
    redis_url: str | None,
    *,
    requests_per_s: float,
    requests_burst: float,
    samples_per_s: float,
    samples_burst: float,
    on_redis_error: str = "deny",
    prefix: str = "bastion:rl",
) -> LocalRateLimiter | RedisRateLimiter:
    buckets = {
        "requests": BucketSpec(requests_per_s, requests_burst),
        "samples": BucketSpec(samples_per_s, samples_burst),
    }
    if redis_url:
        return RedisRateLimiter(redis_url, buckets, prefix=prefix, on_error=on_redis_error)
    return LocalRateLimiter(buckets)
