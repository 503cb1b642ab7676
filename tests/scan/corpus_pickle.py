"""A small pickle assembler for the scan corpus: call trees written opcode by opcode.

The opcodes and their encodings are those of the pickle protocol as documented in CPython's
``Lib/pickletools.py`` (protocols 0–5, PEP 307 for protocol 2, PEP 3154 for protocol 4,
PEP 574 for protocol 5). Writing them by hand (instead of ``pickle.dumps`` of an object with
``__reduce__``) lets a payload use exactly the opcode a technique needs: ``GLOBAL`` or
``STACK_GLOBAL``, names fetched from the memo, ``INST``/``OBJ`` instead of ``REDUCE``,
``BUILD`` with an injected ``__setstate__``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class G:
    """A global: ``module.name`` (a dotted ``name`` needs protocol 4's STACK_GLOBAL)."""

    module: str
    name: str


@dataclass(frozen=True)
class Call:
    """``func(*args)`` through REDUCE."""

    func: Any
    args: tuple = ()


@dataclass(frozen=True)
class Raw:
    """Opcodes emitted verbatim (they must leave exactly one value on the stack)."""

    data: bytes


def _text(s: str) -> bytes:
    """Protocol-0 UNICODE argument: raw-unicode-escape with backslash and newline escaped."""
    return s.replace("\\", "\\u005c").replace("\n", "\\u000a").encode("raw-unicode-escape")


class Assembler:
    """Emit one value tree as a pickle of protocol ``proto``."""

    def __init__(self, proto: int) -> None:
        self.proto = proto
        self.out = bytearray()

    def global_(self, g: G) -> None:
        if self.proto >= 4:
            self.value(g.module)
            self.value(g.name)
            self.out += b"\x93"  # STACK_GLOBAL
        else:
            self.out += b"c" + g.module.encode() + b"\n" + g.name.encode() + b"\n"

    def value(self, v: Any) -> None:
        o = self.out
        if isinstance(v, Raw):
            o += v.data
        elif isinstance(v, G):
            self.global_(v)
        elif isinstance(v, Call):
            self.value(v.func)
            self.value(tuple(v.args))
            o += b"R"
        elif v is None:
            o += b"N"
        elif isinstance(v, bool):
            o += (b"\x88" if v else b"\x89") if self.proto >= 2 else (b"I01\n" if v else b"I00\n")
        elif isinstance(v, int):
            o += b"J" + struct.pack("<i", v) if self.proto >= 1 else b"I%d\n" % v
        elif isinstance(v, str):
            if self.proto >= 1:
                data = v.encode("utf-8")
                o += b"X" + struct.pack("<I", len(data)) + data
            else:
                o += b"V" + _text(v) + b"\n"
        elif isinstance(v, bytes):
            if self.proto < 3:
                raise ValueError("bytes need protocol 3 or later")
            o += b"B" + struct.pack("<I", len(v)) + v
        elif isinstance(v, tuple):
            if self.proto >= 2 and len(v) <= 3:
                for item in v:
                    self.value(item)
                o += {0: b")", 1: b"\x85", 2: b"\x86", 3: b"\x87"}[len(v)]
            else:
                o += b"("
                for item in v:
                    self.value(item)
                o += b"t"
        elif isinstance(v, list):
            o += b"("
            for item in v:
                self.value(item)
            o += b"l"
        elif isinstance(v, dict):
            o += b"("
            for key, item in v.items():
                self.value(key)
                self.value(item)
            o += b"d"
        else:
            raise TypeError(f"cannot assemble {type(v).__name__}")

    def header(self) -> None:
        if self.proto >= 2:
            self.out += b"\x80" + bytes([self.proto])


def assemble(v: Any, proto: int) -> bytes:
    """The pickle of value tree ``v`` at protocol ``proto`` (0–5), ending in STOP."""
    a = Assembler(proto)
    a.header()
    a.value(v)
    a.out += b"."
    return bytes(a.out)


def fragment(v: Any, proto: int) -> bytes:
    """Opcodes for ``v`` alone (no PROTO header, no STOP), to splice into a Raw."""
    a = Assembler(proto)
    a.value(v)
    return bytes(a.out)
