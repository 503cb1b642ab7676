"""Reading a numeric CSV into a feature table and a label column.

The file is UTF-8, with or without a header row (a first row that is not all numbers is the
header). Every row must have as many values as the first; every value must be a number
(``nan``/``inf`` parse, and the dataset checks refuse them later). Every problem is a
:class:`~bastion.errors.DataError` naming the file, and the row where there is one.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bastion.errors import DataError

LABEL_NAMES = ("label", "target", "class", "y")


@dataclass(frozen=True)
class CsvTable:
    """The features (N, D) and labels (N,) of a CSV, as float64; header names if any."""

    x: np.ndarray
    y: np.ndarray
    feature_names: list[str] | None


def _is_number(v: str) -> bool:
    try:
        float(v)
    except ValueError:
        return False
    return True


def read_csv_table(path: str | Path, label_column: str | int | None = None) -> CsvTable:
    """The table of ``path``. ``label_column``: a header name or 0-based index (negative
    from the end); default a column named label/target/class/y, else the first."""
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except FileNotFoundError:
        raise DataError(f"dataset file not found: {path}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc})") from None
    if not rows:
        raise DataError(f"{path}: the CSV file is empty")
    header = None if all(_is_number(c) for c in rows[0]) else [c.strip() for c in rows[0]]
    body = rows[1:] if header else rows
    width = len(rows[0])
    if width < 2:
        raise DataError(f"{path}: need a label column and at least one feature column")
    col = label_index(label_column, header, width, path)
    if not body:
        raise DataError(f"{path}: a header and no data rows")
    for n, r in enumerate(body):
        if len(r) != width:
            line = n + (2 if header else 1)
            raise DataError(f"{path}: row {line} has {len(r)} values, the first row {width}")
    try:
        table = np.array([[float(c) for c in r] for r in body], dtype=np.float64)
    except ValueError as exc:
        raise DataError(
            f"{path}: not a numeric CSV ({exc}); encode categories as numbers"
        ) from None
    features = [i for i in range(width) if i != col]
    names = [header[i] for i in features] if header else None
    return CsvTable(table[:, features], table[:, col], names)


def label_index(given: str | int | None, header: list[str] | None, width: int, path: Path) -> int:
    """The label column's index from a name or an index (negative counts from the end)."""
    if given is None:
        if header:
            for i, h in enumerate(header):
                if h.lower() in LABEL_NAMES:
                    return i
        return 0
    if isinstance(given, int) or re.fullmatch(r"-?[0-9]+", str(given)):
        i = int(given)
        i = i + width if i < 0 else i
        if not 0 <= i < width:
            raise DataError(f"{path}: label column {given} outside 0..{width - 1}")
        return i
    if header and given in header:
        return header.index(str(given))
    raise DataError(f"{path}: no column named {given!r} (header: {', '.join(header or [])})")
