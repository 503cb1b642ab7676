"""Per-client attack-pattern state: the times of each key's blocked injection attempts.

``record(key_id)`` notes an attempt and answers whether the key has now made
``max_attempts`` within ``window_s`` seconds; the route then blocks it through the
gateway's :class:`~bastion.serve.deps.ClientBlocks` (in the store, audited, lapsing after
``blocks.expire_after_s``). :class:`AttackState` counts in memory, per process;
:class:`RedisAttackState` (chosen when ``redis_url`` is set) counts in Redis, so a key
spreading its attempts over the firewall's replicas is counted whole.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import deque
from collections.abc import Callable

log = logging.getLogger(__name__)


class AttackState:
    def __init__(
        self,
        *,
        max_attempts: int,
        window_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self.max_attempts = max_attempts
        self.window_s = window_s
        self.clock = clock
        self.max_clients = max_clients
        self._seen: dict[int, deque[float]] = {}

    def attempts(self, key_id: int) -> int:
        """Attempts of ``key_id`` within the window."""
        times = self._seen.get(key_id)
        if not times:
            return 0
        cutoff = self.clock() - self.window_s
        while times and times[0] < cutoff:
            times.popleft()
        return len(times)

    def record(self, key_id: int) -> bool:
        """Note one attempt; True when the key has reached ``max_attempts`` in the window."""
        if key_id not in self._seen and len(self._seen) >= self.max_clients:
            self._seen.clear()
        self._seen.setdefault(key_id, deque(maxlen=self.max_attempts)).append(self.clock())
        return self.attempts(key_id) >= self.max_attempts

    def forget(self, key_id: int) -> None:
        self._seen.pop(key_id, None)


class RedisAttackState:
    """The same counts shared by replicas: one sorted set of attempt times per key
    (``{prefix}:{key_id}``), trimmed to the window and expiring with it; one pipelined
    round trip per recorded attempt (only refused prompts are recorded).

    A Redis failure is logged and the attempt is not counted: the prompt that caused it is
    refused all the same; only the escalation to a block waits for Redis to return."""

    def __init__(
        self,
        url: str,
        *,
        max_attempts: int,
        window_s: float,
        prefix: str = "bastion:fw:attack",
        timeout_s: float = 2.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        import redis

        self.max_attempts = max_attempts
        self.window_s = window_s
        self.prefix = prefix
        self.clock = clock
        self._client = redis.Redis.from_url(
            url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s
        )
        self._errors: tuple[type[BaseException], ...] = (redis.RedisError, OSError)

    def _key(self, key_id: int) -> str:
        return f"{self.prefix}:{int(key_id)}"

    def attempts(self, key_id: int) -> int:
        now = self.clock()
        try:
            return int(self._client.zcount(self._key(key_id), now - self.window_s, "+inf"))
        except self._errors as exc:
            log.error("LLM firewall attack state: Redis call failed (%s)", exc)
            return 0

    def record(self, key_id: int) -> bool:
        now = self.clock()
        name = self._key(key_id)
        pipe = self._client.pipeline(transaction=True)
        pipe.zadd(name, {f"{now!r}:{uuid.uuid4().hex[:8]}": now})
        pipe.zremrangebyscore(name, "-inf", now - self.window_s)
        pipe.zcard(name)
        pipe.expire(name, max(1, int(self.window_s) + 1))
        try:
            count = int(pipe.execute()[2])
        except self._errors as exc:
            log.error("LLM firewall attack state: Redis call failed, attempt not counted (%s)", exc)
            return False
        return count >= self.max_attempts

    def forget(self, key_id: int) -> None:
        try:
            self._client.delete(self._key(key_id))
        except self._errors as exc:
            log.error("LLM firewall attack state: Redis call failed (%s)", exc)

    def close(self) -> None:
        self._client.close()
