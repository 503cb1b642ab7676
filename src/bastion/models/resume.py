"""Reading resume checkpoints (training epochs, DP-SGD steps) without trusting them.

A checkpoint is loaded through :func:`bastion.models.safe_pickle.load_tensors` (tensors
only: a planted pickle is refused), must be a mapping holding the keys its writer puts
there, and is restored inside :func:`restoring`, so a truncated, corrupt or foreign file is
one :class:`~bastion.errors.CheckpointError` naming it and how to recover (delete it: the
step then starts afresh), never a traceback halfway through a resume.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bastion.errors import CheckpointError
from bastion.models.safe_pickle import first_sentence, load_tensors

FIX = "delete it to redo that step from the start"


def load_checkpoint(
    path: Path | str, *, keys: Sequence[str] = (), map_location: Any = "cpu"
) -> dict[str, Any]:
    """The checkpoint at ``path`` as a mapping that holds every one of ``keys``."""
    state = load_tensors(
        path, map_location=map_location, error=CheckpointError, what="resume checkpoint", fix=FIX
    )
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path}: a resume checkpoint is a mapping, this holds {type(state).__name__}: {FIX}"
        )
    missing = [k for k in keys if k not in state]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks {', '.join(missing)}: {FIX}")
    return state


@contextmanager
def restoring(path: Path | str) -> Iterator[None]:
    """Restore state from the checkpoint at ``path`` inside this block: a value that does not
    fit (wrong shapes, types or fields) becomes one CheckpointError."""
    try:
        yield
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        reason = first_sentence(exc)
        raise CheckpointError(
            f"{path}: the checkpoint does not fit this run ({type(exc).__name__}: {reason}): {FIX}"
        ) from None
