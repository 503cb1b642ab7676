"""One validation layer for command-line values: numbers (finite, in a range), counts, ids,
seeds, names (an unknown one is listed with the valid ones) and output locations.

Each ``*_check`` factory returns a Typer parameter callback; the option aliases below (and
in :mod:`bastion.cli.common`) attach them, so every subcommand refuses a meaningless value
before any work starts. A refused value raises :class:`typer.BadParameter`, which
:func:`bastion.cli.main` prints as one line with exit code 2::

    NEvalOpt = Annotated[int | None, typer.Option(help="...", callback=count_check())]

Bounds: counts are whole numbers from 1 (or 0 where nothing is meaningful too) up to
:data:`MAX_COUNT`; ids and indices fit a 64-bit database integer (:data:`MAX_ID`); seeds
are what NumPy and scikit-learn accept (0 ≤ seed < 2³²).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any

import typer

from bastion.errors import ConfigError
from bastion.store.ids import STORE_INT_MAX

MAX_COUNT = 10**9  # more points, steps, queries or entries than any run can spend
MAX_ID = STORE_INT_MAX  # the largest id or index a 64-bit database integer holds
MAX_SEED = 2**32 - 1  # numpy.random.seed and scikit-learn's random_state
MAX_WORKERS = 256  # hashing processes for `audit verify`
MAX_BLOCK_SECONDS = 100 * 365.25 * 86400  # a client block lapsing later than this is "never"

Callback = Callable[[typer.Context, typer.CallbackParam, Any], Any]


def _fail(ctx: typer.Context, param: typer.CallbackParam, message: str) -> None:
    raise typer.BadParameter(message, ctx=ctx, param=param)


def _each(value: Any) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def integer_range(value: object, lo: int, hi: int) -> str | None:
    """Why ``value`` is not a whole number in [lo, hi], or None when it is."""
    if isinstance(value, bool) or not isinstance(value, int):
        return f"must be a whole number, got {value!r}"
    if not lo <= value <= hi:
        shown = str(value) if abs(value) < 10**30 else f"a {len(str(abs(value)))}-digit number"
        return f"must be a whole number from {lo} to {hi}, got {shown}"
    return None


def _integer_check(lo: int, hi: int, meaning: str = "") -> Callback:
    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        for v in _each(value):
            problem = integer_range(v, lo, hi)
            if problem:
                _fail(ctx, param, problem + (f" ({meaning})" if meaning else ""))
        return value

    return check


def count_check(minimum: int = 1, maximum: int = MAX_COUNT, meaning: str = "") -> Callback:
    """A count: a whole number from ``minimum`` (1 unless 0 means something) to ``maximum``."""
    return _integer_check(minimum, maximum, meaning)


def id_check() -> Callback:
    """A record id (API key, client, run): 1 … 2⁶³−1."""
    return _integer_check(1, MAX_ID)


def index_check() -> Callback:
    """A position or size (audit entry index, tree size): 0 … 2⁶³−1."""
    return _integer_check(0, MAX_ID)


def seed_check() -> Callback:
    """A random seed: 0 … 2³²−1."""
    return _integer_check(0, MAX_SEED)


def finite_range(
    value: object,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    what: str = "",
) -> str | None:
    """Why ``value`` is not a finite number within the bounds, or None when it is (the
    reason starts with ``what``, e.g. "ε values must be >= 0", when given)."""
    lead = f"{what} must" if what else "must"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"{lead} be a number, got {value!r}"
    if not math.isfinite(value):
        return f"{lead} be a finite number, got {value}"
    for bound, ok, word in (
        (gt, lambda b: value > b, ">"),
        (ge, lambda b: value >= b, ">="),
        (lt, lambda b: value < b, "<"),
        (le, lambda b: value <= b, "<="),
    ):
        if bound is not None and not ok(bound):
            return f"{lead} be {word} {bound:g}, got {value:g}"
    return None


def number_check(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    what: str = "",
) -> Callback:
    """A finite number (every one of a repeated option) within the given bounds."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        for v in _each(value):
            problem = finite_range(v, gt=gt, ge=ge, lt=lt, le=le, what=what)
            if problem:
                _fail(ctx, param, problem)
        return value

    return check


def unknown_name(value: str, valid: Iterable[str], what: str) -> str | None:
    """``unknown WHAT 'x': choose from a, b, c`` when ``value`` is not valid, else None."""
    names = list(valid)
    if value in names:
        return None
    return f"unknown {what} {value!r}: choose from {', '.join(names)}"


def choice_check(
    valid: Iterable[str] | Callable[[], Iterable[str]],
    what: str,
    *,
    normalise: Callable[[str], str] | None = None,
) -> Callback:
    """A name (every one of a repeated option) from ``valid`` (a list, or a function giving
    it, called only when a value is given so that registries load lazily)."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: Any) -> Any:
        given = _each(value)
        if not given:
            return value
        names = list(valid() if callable(valid) else valid)
        for v in given:
            problem = unknown_name(normalise(v) if normalise else v, names, what)
            if problem:
                _fail(ctx, param, problem)
        return value

    return check


def prepare_dir(path: Path, option: str) -> Path:
    """Create the output folder ``path`` (and its parents) now, or raise one line saying why
    it cannot be: call it before the work whose results would go there."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path}: exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"{option} {path}: cannot create the folder ({exc.strerror or exc})"
        ) from None
    return path


def prepare_file(path: Path, option: str) -> Path:
    """Make sure the output file ``path`` can be written: its folder is created, and the path
    is not a folder."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a folder, not a file")
    prepare_dir(path.parent if str(path.parent) else Path("."), option)
    return path


# Shared option aliases for numbers several commands take.
SeedOpt = Annotated[int, typer.Option(help="random seed (0 … 2³²−1)", callback=seed_check())]
OptSeedOpt = Annotated[
    int | None,
    typer.Option(help="random seed (0 … 2³²−1; default: the profile's)", callback=seed_check()),
]
