"""The inner loop of the static pickle walker: one pickle, opcode by opcode.

Most opcodes of real model pickles are a handful (memo puts and gets, small ints, short
strings, tuples, MARK, REDUCE, EMPTY_DICT, SETITEMS); this loop handles those inline on
local variables, the fast path. Any other opcode, and any fast-path opcode whose checks
(bounds, stack floor, memo cap) do not pass, goes to its handler in
:mod:`bastion.scan.pickle_ops` from the same offset, before anything was changed, so that
errors, limits and findings are exactly the handlers' (the fast path is an optimisation,
never a second semantics). Frequencies: the ``bastion scan`` benchmark corpus.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from bastion.scan.pickle_joblib import JOBLIB_WRAPPER
from bastion.scan.pickle_ops import HANDLERS, TORCH_FORMATS
from bastion.scan.pickle_values import (
    ANY,
    MAX_ITEMS,
    MAX_MEMO,
    MAX_OPCODES,
    MAX_STACK,
    MAX_VALUE,
    Dict,
    Frame,
    Global,
    Malformed,
    Obj,
    Stop,
)

if TYPE_CHECKING:
    from bastion.scan.pickle_scan import Walker

_U4 = struct.Struct("<I").unpack_from
_I4 = struct.Struct("<i").unpack_from
_MISSING = object()
# first bytes of a byte/str argument that may be a nested pickle (Walker.nested decides):
# protocol 2+ (0x80, or "\xc2\x80" as UTF-8), protocol 0-1 GLOBAL/INST, optionally after "("
_NEST_FIRST = frozenset(b"\x80\xc2(ci")


def may_nest(buf: bytes, start: int, end: int) -> bool:
    """Whether ``buf[start:end]`` can be a nested pickle: a cheap necessary condition for
    :meth:`Walker.nested` (a protocol 0-1 GLOBAL/INST needs its newline)."""
    c = buf[start]
    return c in _NEST_FIRST and (c >= 0x80 or buf.find(b"\n", start, end) >= 0)


# opcodes (pickletools names)
BINGET, BINPUT, BININT1, MEMOIZE = ord("h"), ord("q"), ord("K"), 0x94
BINUNICODE, SHORT_BINUNICODE, REDUCE, MARK = ord("X"), 0x8C, ord("R"), ord("(")
TUPLE, EMPTY_TUPLE, TUPLE1, TUPLE2, TUPLE3 = ord("t"), ord(")"), 0x85, 0x86, 0x87
EMPTY_DICT, NONE, NEWFALSE, NEWTRUE = ord("}"), ord("N"), 0x89, 0x88
SETITEMS, STOP, BININT, BININT2, BINFLOAT = ord("u"), ord("."), ord("J"), ord("M"), ord("G")
EMPTY_LIST, NEWOBJ, BUILD, BINPERSID = ord("]"), 0x81, ord("b"), ord("Q")
SETITEM, APPEND, APPENDS, ADDITEMS = ord("s"), ord("a"), ord("e"), 0x90
PROTO, FRAME = 0x80, 0x95
_CALLS = {REDUCE: "REDUCE", NEWOBJ: "NEWOBJ"}
_APPENDS = frozenset({APPENDS, ADDITEMS})
_TEXT = frozenset({BINUNICODE, SHORT_BINUNICODE})
_FIXED = frozenset({BININT, BININT2, BINFLOAT})
_ROOMY = min(MAX_OPCODES, MAX_STACK, MAX_MEMO)
_CONST = {NONE: None, NEWFALSE: False, NEWTRUE: True, EMPTY_TUPLE: (), EMPTY_LIST: ANY}


def walk_one(w: Walker, pos: int) -> int:
    """Walk one pickle from ``pos`` to just after its STOP; return that position."""
    w.frame = Frame()
    stack, marks = w.frame.stack, w.frame.marks
    buf, n, memo, ops = w.buf, w.n, w.memo, w.ops
    floor = 0  # the stack below the innermost MARK is out of reach
    torch = w.fmt in TORCH_FORMATS  # persistent ids are torch's storages
    # Every opcode takes at least one byte and adds at most one stack item or memo entry,
    # so a stream of at most _ROOMY bytes cannot reach the opcode, stack or memo limits:
    # those checks (and the opcode count, only ever compared with them) are skipped.
    roomy = n <= _ROOMY
    while True:
        try:
            code = buf[pos]
        except IndexError:
            w.ops = ops
            raise Malformed(pos, "truncated: stream ends without STOP") from None
        if not roomy:
            ops += 1
            if ops > MAX_OPCODES:
                w.ops = ops
                raise Stop(f"more than {MAX_OPCODES} opcodes")
        p = pos + 1
        if code == BINGET:
            if p < n and (roomy or len(stack) < MAX_STACK):
                v = memo.get(buf[p], _MISSING)
                if v is not _MISSING:
                    stack.append(v)
                    pos = p + 1
                    continue
        elif code == BINPUT:
            if p < n and len(stack) > floor and (roomy or len(memo) < MAX_MEMO):
                memo[buf[p]] = stack[-1]
                pos = p + 1
                continue
        elif code == BININT1:
            if p < n and (roomy or len(stack) < MAX_STACK):
                stack.append(buf[p])
                pos = p + 1
                continue
        elif code == MEMOIZE:
            if len(stack) > floor and (roomy or len(memo) < MAX_MEMO):
                memo[len(memo)] = stack[-1]
                pos = p
                continue
        elif code in _TEXT:
            if code == SHORT_BINUNICODE:
                start = p + 1
                ln = buf[p] if p < n else -1
            else:
                start = p + 4
                ln = _U4(buf, p)[0] if start <= n else -1
            end = start + ln
            if ln >= 0 and end <= n and (roomy or len(stack) < MAX_STACK):
                if ln >= 4 and may_nest(buf, start, end):
                    w.nested(start, ln, pos, is_text=True)
                if ln > MAX_VALUE:
                    stack.append(ANY)
                else:
                    try:
                        stack.append(buf[start:end].decode("utf-8", "surrogatepass"))
                    except UnicodeDecodeError as exc:
                        w.ops = ops
                        raise Malformed(pos, "invalid utf-8 string") from exc
                pos = end
                continue
        elif code in _CALLS:  # REDUCE, NEWOBJ
            if len(stack) - floor >= 2:
                args = stack.pop()
                fn = stack.pop()
                if fn.__class__ is not Global or not fn.called:
                    w.call(fn, _CALLS[code], pos)
                stack.append(Obj(fn, args))
                pos = p
                continue
        elif code in _CONST:
            if roomy or len(stack) < MAX_STACK:
                stack.append(_CONST[code])
                pos = p
                continue
        elif code == MARK:
            floor = len(stack)
            marks.append(floor)
            pos = p
            continue
        elif code == TUPLE:
            if marks:
                k = marks.pop()
                items = stack[k:]
                del stack[k:]
                floor = marks[-1] if marks else 0
                if not roomy and len(stack) >= MAX_STACK:
                    w.ops = ops
                    raise Stop(f"stack deeper than {MAX_STACK} items")
                stack.append(tuple(items) if len(items) <= MAX_ITEMS else ANY)
                pos = p
                continue
        elif TUPLE1 <= code <= TUPLE3:
            k = code - 0x84
            if len(stack) - floor >= k:
                t = tuple(stack[-k:])
                del stack[-k:]
                stack.append(t)
                pos = p
                continue
        elif code == EMPTY_DICT:
            if roomy or len(stack) < MAX_STACK:
                stack.append(Dict())
                pos = p
                continue
        elif code == SETITEMS:
            if marks and marks[-1] > (marks[-2] if len(marks) > 1 else 0):
                k = marks.pop()
                items = stack[k:]
                del stack[k:]
                floor = marks[-1] if marks else 0
                d = stack[-1]
                if d.__class__ is Dict:
                    d.set_pairs(items)
                pos = p
                continue
        elif code == BUILD:  # on an object of an allowlisted class, not joblib's wrapper
            if len(stack) - floor >= 2:
                target = stack[-2]
                if target.__class__ is Obj:
                    callee = target.callee
                    if callee.__class__ is not Global or (
                        callee.allowed and callee.sym != JOBLIB_WRAPPER
                    ):
                        target.state = stack.pop()
                        pos = p
                        continue
                elif target.__class__ is not Global:
                    stack.pop()
                    pos = p
                    continue
        elif code == STOP:
            if len(stack) > floor:
                stack.pop()
                w.ops = ops
                return p
        elif code == PROTO:
            if p < n and buf[p] <= 5:
                pos = p + 1
                continue
        elif code == BINPERSID:
            if len(stack) > floor and (torch or w.persid_seen):
                stack[-1] = ANY
                pos = p
                continue
        elif code in _FIXED:
            end = p + (4 if code == BININT else 2 if code == BININT2 else 8)
            if end <= n and (roomy or len(stack) < MAX_STACK):
                if code == BININT:
                    stack.append(_I4(buf, p)[0])
                elif code == BININT2:
                    stack.append(buf[p] | (buf[p + 1] << 8))
                else:
                    stack.append(ANY)
                pos = end
                continue
        elif code == SETITEM:
            if len(stack) - floor >= 3:
                v = stack.pop()
                k = stack.pop()
                d = stack[-1]
                if d.__class__ is Dict:
                    d.set(k, v)
                pos = p
                continue
        elif code in _APPENDS:
            if marks and marks[-1] > (marks[-2] if len(marks) > 1 else 0):
                del stack[marks.pop() :]
                floor = marks[-1] if marks else 0
                pos = p
                continue
        elif code == APPEND:
            if len(stack) - floor >= 2:
                stack.pop()
                pos = p
                continue
        elif code == FRAME and p + 8 <= n:  # a framing hint: opcodes are read linearly
            pos = p + 8
            continue
        # everything else, and any fast-path opcode whose checks failed: its handler
        handler = HANDLERS.get(code)
        if handler is None:
            w.ops = ops
            raise Malformed(pos, f"unknown opcode 0x{code:02x}")
        w.ops = ops
        nxt = handler(w, pos, p)
        if nxt < 0:
            return -nxt
        pos, ops, memo = nxt, w.ops, w.memo
        floor = marks[-1] if marks else 0
