"""Progress bars for long work (Rich), silent when disabled or when output is not a terminal
unless forced. Library code calls :func:`track`; the CLI decides whether bars show."""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TypeVar

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

T = TypeVar("T")
_STATE = {"enabled": os.environ.get("BASTION_PROGRESS", "1") != "0"}


def set_progress(enabled: bool) -> None:
    _STATE["enabled"] = enabled


def progress_enabled() -> bool:
    return _STATE["enabled"]


@contextmanager
def task(description: str, total: float | None) -> Iterator[callable]:
    """Yield an ``advance(n=1)`` function that moves a bar (or does nothing when disabled)."""
    if not _STATE["enabled"]:
        yield lambda n=1: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as bar:
        tid = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(tid, n)


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with task(description, total) as advance:
        for item in items:
            yield item
            advance()
