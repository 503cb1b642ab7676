"""Opcode handlers of the static pickle walker and the opcode -> handler table.

One handler per opcode of every protocol (0-5; the opcode table is CPython's
``Lib/pickletools.py``, the stack semantics ``Lib/pickle.py``'s ``_Unpickler``). A handler
gets the walker, the offset of the opcode and the offset of its argument, reads the
argument with the walker's bounds-checked readers, updates the symbolic stack and memo, and
returns the offset of the next opcode (``STOP`` returns it negated). Handlers import
nothing and evaluate nothing; globals and calls are reported through the walker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from bastion.scan.findings import Severity
from bastion.scan.pickle_joblib import JOBLIB_WRAPPER, joblib_payload
from bastion.scan.pickle_values import (
    ANY,
    MAX_ITEMS,
    MAX_MEMO,
    MAX_VALUE,
    Dict,
    Global,
    Malformed,
    Obj,
)

if TYPE_CHECKING:
    from bastion.scan.pickle_scan import Walker

Handler = Callable[["Walker", int, int], int]
TORCH_FORMATS = frozenset({"torch-zip", "torch-legacy"})


# ---- opcode handlers: (walker, offset of the opcode, offset of its argument) -> next -----


def _push_const(value: object, width: int = 0):
    def h(w: Walker, at: int, p: int) -> int:
        w.need(p, width, at)
        w.push(value)
        return p + width

    return h


def _int_fixed(k: int, signed: bool):
    def h(w: Walker, at: int, p: int) -> int:
        v, p = w.uint(p, k, at, signed)
        w.push(v)
        return p

    return h


def _decimal(w: Walker, at: int, p: int) -> int:  # INT, LONG
    s, p = w.line(p, at)
    s = s.rstrip(b"L")
    try:
        w.push(int(s) if len(s) < 40 else ANY)
    except ValueError as exc:
        raise Malformed(at, "invalid decimal argument") from exc
    return p


def _long_n(k: int):
    def h(w: Walker, at: int, p: int) -> int:
        _, _, p = w.blob(p, k, at)
        w.push(ANY)
        return p

    return h


def _float_nl(w: Walker, at: int, p: int) -> int:
    _, p = w.line(p, at)
    w.push(ANY)
    return p


def _text_n(k: int, encoding: str):
    def h(w: Walker, at: int, p: int) -> int:
        start, ln, p = w.blob(p, k, at)
        w.push(w.text(start, ln, at, encoding))
        return p

    return h


def _bytes_n(k: int):
    def h(w: Walker, at: int, p: int) -> int:
        start, ln, p = w.blob(p, k, at)
        w.push(w.raw(start, ln, at))
        return p

    return h


def _string_nl(w: Walker, at: int, p: int) -> int:  # STRING: a quoted repr
    s, p = w.line(p, at)
    w.nested(at + 2, max(len(s) - 2, 0), at, is_text=False)
    if len(s) >= 2 and s[:1] == s[-1:] and s[:1] in (b"'", b'"') and len(s) <= MAX_VALUE:
        w.push(s[1:-1].decode("latin-1"))
    elif len(s) >= 2 and s[:1] == s[-1:] and s[:1] in (b"'", b'"'):
        w.push(ANY)
    else:
        raise Malformed(at, "STRING argument is not quoted")
    return p


def _unicode_nl(w: Walker, at: int, p: int) -> int:
    s, p = w.line(p, at)
    try:
        w.push(s.decode("raw-unicode-escape") if len(s) <= MAX_VALUE else ANY)
    except UnicodeDecodeError as exc:
        raise Malformed(at, "invalid raw-unicode-escape string") from exc
    return p


def _mark(w: Walker, at: int, p: int) -> int:
    w.frame.marks.append(len(w.frame.stack))
    return p


def _pop(w: Walker, at: int, p: int) -> int:
    st, marks = w.frame.stack, w.frame.marks
    if marks and len(st) == marks[-1]:
        marks.pop()  # POP of a MARK, as pickle.py does
    else:
        w.pop(at)
    return p


def _pop_mark(w: Walker, at: int, p: int) -> int:
    w.pop_mark(at)
    return p


def _dup(w: Walker, at: int, p: int) -> int:
    w.push(w.top(at))
    return p


def _tuple_n(k: int):
    def h(w: Walker, at: int, p: int) -> int:
        items = [w.pop(at) for _ in range(k)][::-1]
        w.push(tuple(items))
        return p

    return h


def _tuple_mark(w: Walker, at: int, p: int) -> int:
    items = w.pop_mark(at)
    w.push(tuple(items) if len(items) <= MAX_ITEMS else ANY)
    return p


def _list_mark(w: Walker, at: int, p: int) -> int:
    w.pop_mark(at)
    w.push(ANY)
    return p


def _dict_mark(w: Walker, at: int, p: int) -> int:
    items = w.pop_mark(at)
    d = Dict()
    d.set_pairs(items)
    w.push(d)
    return p


def _empty_dict(w: Walker, at: int, p: int) -> int:
    w.push(Dict())
    return p


def _append(w: Walker, at: int, p: int) -> int:
    w.pop(at)
    w.top(at)
    return p


def _appends(w: Walker, at: int, p: int) -> int:
    w.pop_mark(at)
    w.top(at)
    return p


def _setitem(w: Walker, at: int, p: int) -> int:
    v, k = w.pop(at), w.pop(at)
    d = w.top(at)
    if isinstance(d, Dict):
        d.set(k, v)
    return p


def _setitems(w: Walker, at: int, p: int) -> int:
    items = w.pop_mark(at)
    d = w.top(at)
    if isinstance(d, Dict):
        d.set_pairs(items)
    return p


def _frozenset(w: Walker, at: int, p: int) -> int:
    w.pop_mark(at)
    w.push(ANY)
    return p


def _replace_top(w: Walker, at: int, p: int) -> int:  # READONLY_BUFFER
    w.top(at)
    return p


# memo
def _memo_put(w: Walker, key: int, at: int) -> None:
    if len(w.memo) >= MAX_MEMO and key not in w.memo:
        w.memo_capped = True
        return
    w.memo[key] = w.top(at)


def _memo_get(w: Walker, key: int, at: int) -> None:
    if key in w.memo:
        w.push(w.memo[key])
    elif w.memo_capped:
        w.push(ANY)
    else:
        raise Malformed(at, f"memo key {key} was never stored")


def _put_nl(w: Walker, at: int, p: int) -> int:
    s, p = w.line(p, at)
    if not s.isdigit():
        raise Malformed(at, "invalid PUT index")
    _memo_put(w, int(s), at)
    return p


def _get_nl(w: Walker, at: int, p: int) -> int:
    s, p = w.line(p, at)
    if not s.isdigit():
        raise Malformed(at, "invalid GET index")
    _memo_get(w, int(s), at)
    return p


def _put_n(k: int):
    def h(w: Walker, at: int, p: int) -> int:
        key, p = w.uint(p, k, at)
        _memo_put(w, key, at)
        return p

    return h


def _get_n(k: int):
    def h(w: Walker, at: int, p: int) -> int:
        key, p = w.uint(p, k, at)
        _memo_get(w, key, at)
        return p

    return h


def _memoize(w: Walker, at: int, p: int) -> int:
    _memo_put(w, len(w.memo) if not w.memo_capped else MAX_MEMO + w.ops, at)
    return p


# globals and calls
def _pair(w: Walker, at: int, p: int) -> tuple[str, str, int]:
    mod, p = w.line(p, at)
    name, p = w.line(p, at)
    try:
        return mod.decode("utf-8"), name.decode("utf-8"), p
    except UnicodeDecodeError as exc:
        raise Malformed(at, "GLOBAL module or name is not UTF-8") from exc


def _global(w: Walker, at: int, p: int) -> int:
    mod, name, p = _pair(w, at, p)
    w.push(w.new_global(mod, name, at, "GLOBAL"))
    return p


def _stack_global(w: Walker, at: int, p: int) -> int:
    name, mod = w.pop(at), w.pop(at)
    if isinstance(mod, str) and isinstance(name, str):
        w.push(w.new_global(mod, name, at, "STACK_GLOBAL"))
    else:
        w.push(w.new_global(None, None, at, "STACK_GLOBAL"))
    return p


def _ext(k: int):
    def h(w: Walker, at: int, p: int) -> int:
        code, p = w.uint(p, k, at)
        w.push(
            w.new_global(None, f"copyreg-extension:{code}", at, f"EXT{k}", rule="pickle.ext-code")
        )
        return p

    return h


def _reduce(w: Walker, at: int, p: int) -> int:
    args, fn = w.pop(at), w.pop(at)
    w.call(fn, "REDUCE", at)
    w.push(Obj(fn, args))
    return p


def _newobj(w: Walker, at: int, p: int) -> int:
    args, cls = w.pop(at), w.pop(at)
    w.call(cls, "NEWOBJ", at)
    w.push(Obj(cls, args))
    return p


def _newobj_ex(w: Walker, at: int, p: int) -> int:
    w.pop(at)
    args, cls = w.pop(at), w.pop(at)
    w.call(cls, "NEWOBJ_EX", at)
    w.push(Obj(cls, args))
    return p


def _inst(w: Walker, at: int, p: int) -> int:
    mod, name, p = _pair(w, at, p)
    args = w.pop_mark(at)
    g = w.new_global(mod, name, at, "INST")
    w.call(g, "INST", at)
    w.push(Obj(g, tuple(args)))
    return p


def _obj(w: Walker, at: int, p: int) -> int:
    items = w.pop_mark(at)
    if not items:
        raise Malformed(at, "OBJ without a class")
    w.call(items[0], "OBJ", at)
    w.push(Obj(items[0], tuple(items[1:])))
    return p


def _build(w: Walker, at: int, p: int) -> int:
    state = w.pop(at)
    target = w.top(at)
    if isinstance(target, Global):
        w.call(target, "BUILD", at)
        w.emit(
            "pickle.build-global",
            Severity.critical,
            f"BUILD sets attributes on the global {target.sym} itself",
            "BUILD on a class or module overwrites its attributes in the loading process",
            at,
            target.sym,
        )
        return p
    if isinstance(target, Obj):
        if isinstance(target.callee, Global) and not target.callee.allowed:
            w.call(target.callee, "BUILD", at)  # __setstate__ of a class outside the allowlist
        target.state = state
        if isinstance(target.callee, Global) and target.callee.sym == JOBLIB_WRAPPER:
            return joblib_payload(w, at, p, state)
    return p


def _persid(w: Walker, at: int, p: int) -> int:
    _, p = w.line(p, at)
    _note_persid(w, at)
    w.push(ANY)
    return p


def _binpersid(w: Walker, at: int, p: int) -> int:
    w.pop(at)
    _note_persid(w, at)
    w.push(ANY)
    return p


def _note_persid(w: Walker, at: int) -> None:
    if w.fmt in TORCH_FORMATS or w.persid_seen:
        return
    w.persid_seen = True
    w.emit(
        "pickle.persistent-id",
        Severity.low,
        "persistent id outside a torch checkpoint",
        "the loader's persistent_load decides what the id becomes; plain pickle.load refuses it",
        at,
    )


def _proto(w: Walker, at: int, p: int) -> int:
    v, p = w.uint(p, 1, at)
    if v > 5:
        raise Malformed(at, f"unsupported protocol {v}")
    return p


def _frame(w: Walker, at: int, p: int) -> int:
    _, p = w.uint(p, 8, at)
    return p  # a framing hint; opcodes are read linearly


def _next_buffer(w: Walker, at: int, p: int) -> int:
    w.push(ANY)
    return p


def _stop(w: Walker, at: int, p: int) -> int:
    w.pop(at)
    return -p


HANDLERS: dict[int, Handler] = {
    ord("("): _mark,
    ord("."): _stop,
    ord("0"): _pop,
    ord("1"): _pop_mark,
    ord("2"): _dup,
    ord("F"): _float_nl,
    ord("I"): _decimal,
    ord("J"): _int_fixed(4, True),
    ord("K"): _int_fixed(1, False),
    ord("L"): _decimal,
    ord("M"): _int_fixed(2, False),
    ord("N"): _push_const(None),
    ord("P"): _persid,
    ord("Q"): _binpersid,
    ord("R"): _reduce,
    ord("S"): _string_nl,
    ord("T"): _text_n(4, "latin-1"),
    ord("U"): _text_n(1, "latin-1"),
    ord("V"): _unicode_nl,
    ord("X"): _text_n(4, "utf-8"),
    ord("a"): _append,
    ord("b"): _build,
    ord("c"): _global,
    ord("d"): _dict_mark,
    ord("}"): _empty_dict,
    ord("e"): _appends,
    ord("g"): _get_nl,
    ord("h"): _get_n(1),
    ord("i"): _inst,
    ord("j"): _get_n(4),
    ord("l"): _list_mark,
    ord("]"): _push_const(ANY),
    ord("o"): _obj,
    ord("p"): _put_nl,
    ord("q"): _put_n(1),
    ord("r"): _put_n(4),
    ord("s"): _setitem,
    ord("t"): _tuple_mark,
    ord(")"): _push_const(()),
    ord("u"): _setitems,
    ord("G"): _push_const(ANY, 8),
    0x80: _proto,
    0x81: _newobj,
    0x82: _ext(1),
    0x83: _ext(2),
    0x84: _ext(4),
    0x85: _tuple_n(1),
    0x86: _tuple_n(2),
    0x87: _tuple_n(3),
    0x88: _push_const(True),
    0x89: _push_const(False),
    0x8A: _long_n(1),
    0x8B: _long_n(4),
    ord("B"): _bytes_n(4),
    ord("C"): _bytes_n(1),
    0x8C: _text_n(1, "utf-8"),
    0x8D: _text_n(8, "utf-8"),
    0x8E: _bytes_n(8),
    0x8F: _push_const(ANY),
    0x90: _appends,
    0x91: _frozenset,
    0x92: _newobj_ex,
    0x93: _stack_global,
    0x94: _memoize,
    0x95: _frame,
    0x96: _bytes_n(8),
    0x97: _next_buffer,
    0x98: _replace_top,
}
