"""``torch.load`` restricted to tensors, with errors a user can act on.

PyTorch's own refusal message tells the reader to retry with ``weights_only=False``, which
runs whatever code the file holds: the one thing to never do with an untrusted file.
:func:`refusal_detail` keeps only what was refused (e.g. ``GLOBAL posix.system``) and
:func:`load_tensors` raises :class:`~bastion.errors.UnsafeModelError` with that detail, or
the caller's error type for a file that cannot be read at all.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from bastion.errors import BastionError, ModelError, UnsafeModelError

# Lines of PyTorch's message that give advice (retry unsafely, allowlist a global, docs)
_ADVICE = re.compile(
    r"weights_only|safe_globals|trusted|trust |documentation|file an issue|"
    r"load failed|will likely succeed|arbitrary code",
    re.IGNORECASE,
)
GENERIC = "objects outside the tensor allowlist"


def refusal_detail(exc: BaseException) -> str:
    """What the restricted unpickler refused, without PyTorch's advice to load it anyway."""
    for raw in str(exc).splitlines():
        line = raw.split("WeightsUnpickler error:", 1)[-1].strip()
        if not line or _ADVICE.search(line):
            continue
        first = re.split(r"(?<=\.)\s", line, maxsplit=1)[0]
        return " ".join(first.split())[:200]
    return GENERIC


def refused(path: Path | str, exc: BaseException) -> UnsafeModelError:
    """The error for a pickle outside the tensor allowlist (never loaded)."""
    return UnsafeModelError(
        f"{path}: refused: the pickle holds {GENERIC} ({refusal_detail(exc)}); loading it "
        "could execute code. Re-save the weights as safetensors or a plain state_dict"
    )


def load_tensors(
    path: Path | str,
    *,
    map_location: Any = "cpu",
    error: type[BastionError] = ModelError,
    what: str = "file",
    fix: str = "",
) -> Any:
    """``torch.load(path, weights_only=True)``: a refused pickle is UnsafeModelError; an
    unreadable, truncated or corrupt file is ``error`` ("cannot read the WHAT (...)", then
    ``fix``)."""
    from bastion.scan.engine import require_clean

    if isinstance(path, (str, Path)) and Path(path).is_file():
        require_clean(Path(path))  # static scan first: refuses before any unpickling
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "load failed" in str(exc) or "GLOBAL" in str(exc):
            raise refused(path, exc) from None
        raise error(_unreadable(path, what, exc, fix)) from None
    except Exception as exc:  # torch's parser on malformed bytes: struct.error, EOFError, ...
        raise error(_unreadable(path, what, exc, fix)) from None


def first_sentence(exc: BaseException, limit: int = 200) -> str:
    """The first sentence of an exception's message, on one line."""
    text = " ".join(str(exc).split())
    return re.split(r"(?<=\.)\s", text, maxsplit=1)[0][:limit] or type(exc).__name__


def _unreadable(path: Path | str, what: str, exc: BaseException, fix: str) -> str:
    reason = first_sentence(exc)
    tail = f": {fix}" if fix else ""
    return f"{path}: cannot read the {what} ({type(exc).__name__}: {reason}){tail}"
