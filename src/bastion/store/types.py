"""Column types of the record store that behave the same on SQLite and PostgreSQL.

:class:`UTCDateTime`: every time is stored in UTC and read back as an aware UTC datetime.
PostgreSQL's ``timestamptz`` converts on its own; SQLite keeps the wall-clock digits and
drops the offset, so an aware time in another zone (``+05:00``) would come back five
hours off, and comparisons in SQL (expiry, idle cut-offs) would be wrong. Converting on
the way in makes both stores hold and compare the same instants. A naive time is taken as
UTC (what every caller of the store passes).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.types import TypeDecorator

from bastion.errors import StoreError


def as_utc(t: datetime) -> datetime:
    """``t`` in UTC (a naive ``t`` is taken to be UTC already)."""
    return t.replace(tzinfo=UTC) if t.tzinfo is None else t.astimezone(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """``DateTime(timezone=True)`` that stores UTC and returns aware UTC datetimes."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: Any, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


def check_text(value: str, what: str, *, max_len: int | None = None) -> str:
    """``value`` when both stores can hold it in a column of ``max_len`` characters, else
    StoreError: SQLite keeps any string, PostgreSQL refuses NUL characters and strings
    longer than a ``VARCHAR(n)``, so the store refuses them on both, with one line."""
    if "\x00" in value:
        raise StoreError(f"the {what} holds a NUL character, which the store cannot keep")
    if max_len is not None and len(value) > max_len:
        raise StoreError(f"the {what} is {len(value)} characters long; at most {max_len}")
    return value
