"""Per-client attack-pattern state: the times of each key's blocked injection attempts.

``record(key_id)`` notes an attempt and answers whether the key has now made
``max_attempts`` within ``window_s`` seconds; the route then blocks it through the
gateway's :class:`~bastion.serve.deps.ClientBlocks` (in the store, audited, lapsing after
``blocks.expire_after_s``). In memory, per process: replicas count apart.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


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
