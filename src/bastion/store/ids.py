"""The range of integer ids the record store can hold.

SQLite stores integers up to 2^63 − 1; the store's ``Integer`` columns on PostgreSQL are
32-bit. Lookups by an id outside what the engine's columns hold find nothing (rather
than overflow in the driver): callers check :func:`storable` first.
"""

from __future__ import annotations

from sqlalchemy import Engine

STORE_INT_MAX = 2**63 - 1  # SQLite's largest integer
_INT32_MAX = 2**31 - 1


def max_id(engine: Engine) -> int:
    """The largest id the engine's ``Integer`` columns hold."""
    return _INT32_MAX if engine.dialect.name == "postgresql" else STORE_INT_MAX


def storable(engine: Engine, value: int) -> bool:
    """Whether ``value`` can be an id in this store (0 .. :func:`max_id`)."""
    return 0 <= value <= max_id(engine)
