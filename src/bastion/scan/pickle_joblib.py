"""joblib array payloads: skip the raw array bytes joblib writes inside its pickle stream.

``joblib.dump`` pickles a ``NumpyArrayWrapper`` for each numpy array and writes the array's
buffer right after the wrapper's BUILD opcode (``joblib/numpy_pickle.py``,
``NumpyArrayWrapper.write_array``), so the stream is not a plain pickle. The walker computes
the payload's size from the wrapper state (shape, ``numpy.dtype`` typestr or itemsize,
optional alignment padding) and jumps over it; object arrays are a nested protocol-5 pickle
with its own memo and are walked instead.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from bastion.scan.pickle_values import Dict, Global, Malformed, Obj

if TYPE_CHECKING:
    from bastion.scan.pickle_scan import Walker

JOBLIB_WRAPPER = "joblib.numpy_pickle.NumpyArrayWrapper"
_NUMPY_DTYPE = "numpy.dtype"
_TYPESTR = re.compile(r"\A[<>|=]?([a-zA-Z])(\d*)")


def joblib_payload(w: Walker, at: int, p: int, state: object) -> int:
    """Skip (or, for object arrays, scan) the array joblib writes right after the wrapper's
    BUILD (``joblib/numpy_pickle.py``, ``NumpyArrayWrapper.write_array``)."""
    if not isinstance(state, Dict):
        raise Malformed(at, "joblib array wrapper without a readable state")
    s = state.items
    shape, dtype = s.get("shape"), s.get("dtype")
    item = _itemsize(dtype)
    if item == 0:  # object array: a full protocol-5 pickle follows
        saved = w.frame, w.memo, w.memo_capped
        w.memo, w.memo_capped = {}, False  # a separate pickle.dump: its own memo
        try:
            return w.walk_one(p)
        finally:
            w.frame, w.memo, w.memo_capped = saved
    if (
        not isinstance(shape, tuple)
        or not all(isinstance(d, int) and d >= 0 for d in shape)
        or item is None
    ):
        raise Malformed(at, "joblib array size cannot be determined statically")
    count = 1
    for d in shape:
        count *= d
    if s.get("numpy_array_alignment_bytes") is not None:
        pad, p = w.uint(p, 1, at)
        w.need(p, pad, at)
        p += pad
    w.need(p, count * item, at)
    return p + count * item


def _itemsize(dtype: object) -> int | None:
    """Bytes per element from a pickled ``numpy.dtype(typestr, ...)``; 0 for object arrays."""
    if not (isinstance(dtype, Obj) and isinstance(dtype.callee, Global)):
        return None
    if (
        dtype.callee.sym not in (_NUMPY_DTYPE,)
        or not isinstance(dtype.args, tuple)
        or not dtype.args
    ):
        return None
    m = _TYPESTR.match(dtype.args[0]) if isinstance(dtype.args[0], str) else None
    if m is None:
        return None
    if m.group(1) == "O":
        return 0
    st = dtype.state
    if isinstance(st, tuple) and len(st) > 5 and isinstance(st[5], int) and st[5] > 0:
        return st[5]
    return int(m.group(2)) if m.group(2) else None
