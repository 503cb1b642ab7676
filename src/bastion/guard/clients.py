"""Bounded per-client state shared by the guard's stateful monitors (PRADA, similarity,
coverage): at most ``max_clients`` clients, the least recently seen evicted first, under one
lock that the monitor holds while it updates a client."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class ClientTable(Generic[T]):
    """``client id → state``, LRU-bounded. :meth:`touch` and :meth:`get` expect the caller
    to hold :attr:`lock` (the state they return is mutated under it); :meth:`discard` and
    :meth:`ids` take it themselves."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self._rows: OrderedDict[str, T] = OrderedDict()

    def touch(self, client_id: str, make: Callable[[], T], max_clients: int) -> T:
        """The client's state, made with ``make()`` on first sight, marked most recent;
        evicts the least recently seen clients beyond ``max_clients``."""
        state = self._rows.get(client_id)
        if state is None:
            state = self._rows[client_id] = make()
            while len(self._rows) > max_clients:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end(client_id)
        return state

    def get(self, client_id: str) -> T | None:
        return self._rows.get(client_id)

    def discard(self, client_id: str) -> None:
        with self.lock:
            self._rows.pop(client_id, None)

    def ids(self) -> list[str]:
        with self.lock:
            return list(self._rows)
