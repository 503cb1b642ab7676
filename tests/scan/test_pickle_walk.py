"""The walker's inline fast path (bastion.scan.pickle_walk) against the opcode handlers alone.

The fast path must be an optimisation only: on every input, valid or hostile, the findings
(rules, severities, messages, offsets, symbols) equal those of a walk that sends every opcode
to its handler in bastion.scan.pickle_ops. Inputs: pickles of every protocol, the corpus's
malicious payloads, joblib-style streams, and their truncations and byte mutations.
"""

from __future__ import annotations

import collections
import datetime
import io
import os
import pickle
import random

import numpy as np
import pytest

from bastion.scan import pickle_scan
from bastion.scan.allowlist import allowlist
from bastion.scan.pickle_ops import HANDLERS
from bastion.scan.pickle_scan import scan_pickle
from bastion.scan.pickle_values import MAX_OPCODES, MAX_STACK, MAX_VALUE, Frame, Malformed, Stop
from tests.scan.corpus_payloads import pickle_payloads

ALLOW = allowlist(("sklearn", "joblib"))


def _reference_walk_one(w: pickle_scan.Walker, pos: int) -> int:
    """Every opcode through its handler: the semantics the fast path must keep."""
    w.frame = Frame()
    while True:
        if pos >= w.n:
            raise Malformed(pos, "truncated: stream ends without STOP")
        w.ops += 1
        if w.ops > MAX_OPCODES:
            raise Stop(f"more than {MAX_OPCODES} opcodes")
        code = w.buf[pos]
        handler = HANDLERS.get(code)
        if handler is None:
            raise Malformed(pos, f"unknown opcode 0x{code:02x}")
        nxt = handler(w, pos, pos + 1)
        if nxt < 0:
            return -nxt
        pos = nxt


class _System:
    def __reduce__(self):
        return (os.system, ("touch marker",))


def _joblib_like() -> bytes:
    """A NumpyArrayWrapper-style stream: the array bytes follow the wrapper's BUILD."""
    import joblib

    buf = io.BytesIO()
    joblib.dump({"w": np.arange(6, dtype=np.float32), "o": np.array([1, "a"], object)}, buf)
    return buf.getvalue()


def _seeds() -> list[bytes]:
    values = [
        None,
        True,
        (1, -2, 300, 70000, -(2**31), 2**40, 2**100),
        [1.5, "é\u20ac\U0001f600", "x" * 2000, b"raw", bytearray(b"ba" * 300)],
        ("y" * MAX_VALUE, "z" * (MAX_VALUE + 1), b"b" * (MAX_VALUE + 1)),  # value cap edges
        {"a": 1, 2: (3,), (4, 5): {6: [7]}, "n": {"deep": {"er": ()}}},
        {i: str(i) for i in range(300)},
        frozenset({1, 2}),
        {3, 4},
        collections.OrderedDict(a=1),
        datetime.date(2024, 1, 2),
        [[]] * 3,
        "cos\nsystem\n",  # a string that looks like a protocol-0 GLOBAL
        pickle.dumps(_System(), protocol=2),  # a nested pickle in a byte string
        _System(),
        np.arange(4),
    ]
    shared = ["s"]
    values.append([shared, shared, (shared,)])  # memo gets
    out = [pickle.dumps(v, protocol=p) for v in values for p in range(6)]
    out += [p.data for p in pickle_payloads("/tmp/bastion-never-created")]
    out.append(_joblib_like())
    out.append(pickle.dumps(1, protocol=2) + pickle.dumps(_System(), protocol=4))  # appended
    return out


def _variants(data: bytes, rng: random.Random) -> list[bytes]:
    out = [data]
    cuts = sorted({rng.randrange(len(data)) for _ in range(12)})
    out += [data[:c] for c in cuts]
    for _ in range(12):
        b = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        out.append(bytes(b))
    return out


def _findings(data: bytes, fmt: str) -> list[dict]:
    return [f.model_dump() for f in scan_pickle(data, location="m.pkl", fmt=fmt, allow=ALLOW)]


@pytest.mark.parametrize("fmt", ["pickle", "torch-zip", "joblib"])
def test_fast_path_matches_the_handlers(monkeypatch, fmt):
    rng = random.Random(1234)
    inputs = [v for seed in _seeds() for v in _variants(seed, rng)]
    fast = [_findings(d, fmt) for d in inputs]
    monkeypatch.setattr(pickle_scan.Walker, "walk_one", _reference_walk_one)
    slow = [_findings(d, fmt) for d in inputs]
    mismatched = [d[:40] for d, a, b in zip(inputs, fast, slow, strict=True) if a != b]
    assert not mismatched, f"{len(mismatched)} of {len(inputs)} differ, e.g. {mismatched[:3]}"
    # the comparison is not vacuous: hostile and broken inputs give findings
    rules = {f["rule"] for found in fast for f in found}
    assert {"pickle.global", "pickle.malformed"} <= rules


def test_fast_path_matches_the_handlers_past_the_roomy_size(monkeypatch):
    """Streams longer than the stack/memo/opcode limits keep every limit check."""
    shared = ["s"]
    big = pickle.dumps(
        {"pad": b"x" * (MAX_STACK + 10), "l": list(range(300)), "m": [shared, shared]}, 4
    )
    big += pickle.dumps(_System(), protocol=2)
    inputs = [big, big[: MAX_STACK + 200], big[:-3]]
    fast = [_findings(d, "pickle") for d in inputs]
    monkeypatch.setattr(pickle_scan.Walker, "walk_one", _reference_walk_one)
    assert fast == [_findings(d, "pickle") for d in inputs]
    assert any(f["symbol"] == "posix.system" for f in fast[0])


@pytest.mark.parametrize(
    "data",
    [
        b"\x80\x04K",  # BININT1 without its byte
        b"\x80\x04\x8c\x05abc",  # SHORT_BINUNICODE past the end
        b"\x80\x04X\xff\xff\xff\xffab.",  # BINUNICODE length past the end
        b"\x80\x04\x8c\x02\xff\xfe.",  # invalid UTF-8
        b"\x80\x04h\x07.",  # BINGET of a key never stored
        b"\x80\x04q\x00.",  # BINPUT on an empty stack
        b"\x80\x04\x94.",  # MEMOIZE on an empty stack
        b"\x80\x04N(R.",  # REDUCE across a MARK
        b"\x80\x04t.",  # TUPLE without MARK
        b"\x80\x04(N\x86.",  # TUPLE2 across a MARK
        b"\x80\x04}(N.u.",  # SETITEMS with an odd item
        b"\x80\x04(u.",  # SETITEMS with nothing under the MARK
        b"\x80\x04N(b.",  # BUILD across a MARK
        b"\x80\x04Q.",  # BINPERSID on an empty stack
        b"\x80\x04NNs.",  # SETITEM with two items
        b"\x80\x04(e.",  # APPENDS with nothing under the MARK
        b"\x80\x07N.",  # unsupported protocol
        b"\x80\x04\x95\x01\x00.",  # FRAME cut short
        b"\x80\x04.",  # STOP on an empty stack
        b"\x80\x04N",  # no STOP
    ],
)
def test_fast_path_errors_match_the_handlers(monkeypatch, data):
    fast = _findings(data, "pickle")
    monkeypatch.setattr(pickle_scan.Walker, "walk_one", _reference_walk_one)
    assert fast == _findings(data, "pickle")
    assert fast, "each of these inputs is malformed"
