"""The gateway's path and query parameters: one bound for every id, offset, index and size.

Every integer a request names (a key or client id in the path, an audit offset, index or
tree size in the query) is validated by FastAPI against the same range before a route
runs: ``0 .. STORE_INT_MAX``, the largest integer SQLite stores (2^63 − 1). Outside it the
answer is 422 (``code: invalid``, the parameter named), never an overflow in the store.
An id inside the range that the store's column cannot hold (PostgreSQL's 32-bit ids) is
simply not found: see :func:`bastion.store.ids.storable`. Ticket ids in the path are
bounded too (:data:`TicketPath`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Path, Query

from bastion.store.ids import STORE_INT_MAX

__all__ = ["STORE_INT_MAX", "IdPath", "PageLimit", "TicketPath", "store_int_query"]

_BOUNDS: dict[str, Any] = {"ge": 0, "le": STORE_INT_MAX}

IdPath = Annotated[
    int, Path(**_BOUNDS, description=f"an API key's id (0 .. {STORE_INT_MAX})", examples=[1])
]
"""A key or client id in the path."""


def store_int_query(description: str, *, ge: int = 0) -> Any:
    """``Query`` for an offset, index or size (``Annotated[int, store_int_query(...)]``):
    ``ge .. STORE_INT_MAX``; required unless the parameter has a default."""
    return Query(ge=ge, le=STORE_INT_MAX, description=description)


PageLimit = Annotated[int, Query(ge=1, le=1000, description="most items returned (1 .. 1000)")]
"""How many items a listing returns."""


TicketPath = Annotated[
    str,
    Path(
        pattern=r"^[A-Za-z0-9_-]{1,64}$",
        description="a ticket id (the gateway makes 32 hex digits); an unknown one is 404",
        examples=["3f2a9c4e5b6d7e8f9a0b1c2d3e4f5a6b"],
    ),
]
"""A review ticket in the path: letters, digits, '-' and '_', 1 .. 64 of them."""
