"""Symbolic values, limits and internal exceptions of the static pickle walker.

The walker of :mod:`bastion.scan.pickle_scan` never builds real objects: its stack and memo
hold short strings, small ints and tuples as values, and otherwise these stand-ins. A
:class:`Global` is one ``GLOBAL``/``STACK_GLOBAL``/``INST``/``EXT*`` import, tracked so that a
later call through the memo still marks it *called*; an :class:`Obj` is what
``REDUCE``/``NEWOBJ``/``OBJ``/``INST`` built; a :class:`Dict` keeps a few constant keys (enough
for joblib's array-wrapper state); ``ANY`` is every other value and ``MARK`` the MARK
object. Semantics follow CPython ``Lib/pickle.py`` (``_Unpickler``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

MAX_FINDINGS = 100  # per call (member); the rest are summarised in one finding
MAX_OPCODES = 50_000_000
MAX_STACK = 1_000_000
MAX_MEMO = 1_000_000
MAX_VALUE = 1024  # longest string kept as a value (module/name operands are short)
MAX_ITEMS = 64  # longest tuple / dict kept as a value


class Malformed(Exception):
    """Internal: the stream cannot be parsed further (offset, reason)."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(reason)
        self.offset = offset
        self.reason = reason


class Stop(Exception):
    """Internal: a resource limit was reached."""


MARK = object()
ANY = object()


class Global:
    """One imported global: its name, where it was imported, and whether it is called."""

    __slots__ = ("allowed", "called", "dangerous", "offset", "opcode", "rule", "sym", "via")

    def __init__(
        self, sym: str, offset: int, opcode: str, rule: str, allowed: bool, dangerous: bool
    ):
        self.sym, self.offset, self.opcode, self.rule = sym, offset, opcode, rule
        self.allowed, self.dangerous = allowed, dangerous
        self.called = False
        self.via = ""


class Obj:
    """What REDUCE/NEWOBJ/OBJ/INST built: its callee (when a global) and argument values."""

    __slots__ = ("args", "callee", "state")

    def __init__(self, callee: object, args: object) -> None:
        self.callee, self.args, self.state = callee, args, None


class Dict:
    """A dict value: up to ``MAX_ITEMS`` str/int keys; ``full`` once any were dropped."""

    __slots__ = ("full", "items")

    def __init__(self) -> None:
        self.items: dict[object, object] = {}
        self.full = False

    def set(self, key: object, value: object) -> None:
        if len(self.items) >= MAX_ITEMS or not isinstance(key, (str, int)):
            self.full = True
        else:
            self.items[key] = value

    def set_pairs(self, flat: list[object]) -> None:
        """``set`` for each (key, value) of ``[k0, v0, k1, v1, ...]`` (an odd last item is
        ignored, as DICT/SETITEMS do)."""
        items = self.items
        for i in range(0, len(flat) - 1, 2):
            key = flat[i]
            if len(items) >= MAX_ITEMS or not isinstance(key, (str, int)):
                self.full = True
            else:
                items[key] = flat[i + 1]


@dataclass
class Frame:
    """The stack and MARK positions of one pickle (reset at each top-level pickle)."""

    stack: list[object] = field(default_factory=list)
    marks: list[int] = field(default_factory=list)
