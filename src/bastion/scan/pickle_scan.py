"""Static pickle analysis: walk the opcodes of every protocol (0-5) without unpickling.

The walker reads each opcode and its argument with its own bounds-checked readers (the
opcode table is CPython's ``Lib/pickletools.py``; the semantics ``Lib/pickle.py``'s
``_Unpickler``) and keeps a *symbolic* stack and memo: strings, small ints and tuples
are kept as values so that ``STACK_GLOBAL`` operands can be resolved through
``MEMOIZE``/``PUT``/``GET``, globals are tracked objects so that a ``REDUCE``/``NEWOBJ``/
``OBJ``/``INST``/``BUILD`` reached through the memo still marks the global as *called*, and
everything else is an opaque marker. Nothing is imported or evaluated.

Decisions are by allowlist (:mod:`bastion.scan.allowlist`): every global outside it is a
``pickle.global`` finding, ``critical`` when the stream calls it or it is known to be
dangerous, ``high`` when it is only referenced. Globals that cannot be named statically
(``STACK_GLOBAL`` over computed operands, ``EXT1/2/4`` extension codes) are findings too.
Appended pickles after ``STOP`` and pickles nested in byte/str arguments are scanned; joblib
array payloads written after a ``NumpyArrayWrapper``'s BUILD are skipped by their size.
Hostile input ends in a ``pickle.malformed`` or ``pickle.limits`` finding, never an
exception: time is linear in the input, and stack, memo, values and findings are capped.

References: CPython ``pickletools`` and ``pickle`` (PEP 307 protocol 2, PEP 3154 protocol 4,
PEP 574 protocol 5); Trail of Bits, "Never a dill moment: Exploiting machine learning
pickle files" (2021); Zhu et al., "My Model is Malware to You" (2025, exception-oriented
and gadget payloads that evade denylist scanners).

Layout: this module holds the walker and :func:`scan_pickle`; the opcode loop (with an
inline fast path for the common opcodes) is in :mod:`bastion.scan.pickle_walk`, the opcode
handlers in :mod:`bastion.scan.pickle_ops`, the symbolic values and limits in
:mod:`bastion.scan.pickle_values`, the joblib array skip in :mod:`bastion.scan.pickle_joblib`.
"""

from __future__ import annotations

import logging
import re

from bastion.scan.allowlist import Allowlist, is_dangerous
from bastion.scan.findings import ScanFinding, Severity
from bastion.scan.pickle_ops import HANDLERS as _HANDLERS
from bastion.scan.pickle_values import (
    ANY,
    MAX_FINDINGS,
    MAX_MEMO,
    MAX_OPCODES,
    MAX_STACK,
    MAX_VALUE,
    Frame,
    Global,
    Malformed,
    Stop,
)
from bastion.scan.pickle_walk import may_nest, walk_one

__all__ = ["MAX_FINDINGS", "MAX_MEMO", "MAX_OPCODES", "MAX_STACK", "scan_pickle"]

log = logging.getLogger(__name__)

_LEGACY_PICKLES = 5  # torch legacy: magic, protocol, sys_info, object, storage keys
_PROTO0_GLOBAL = re.compile(rb"\A\(?[ci][A-Za-z_][\w.]*\n[A-Za-z_][\w.]*\n")


def _sev_max(a: Severity, b: Severity) -> Severity:
    return a if a.rank >= b.rank else b


class Walker:
    """One bounded walk over a pickle stream: symbolic stack and memo, findings, limits.

    The opcode handlers (:mod:`bastion.scan.pickle_ops`) drive it through its stack,
    argument-reader, value and finding methods; :meth:`run` walks every pickle in the
    stream and turns malformed input or a reached limit into a finding.
    """

    __slots__ = (
        "allow",
        "buf",
        "data",
        "depth",
        "findings",
        "fmt",
        "frame",
        "globals",
        "location",
        "max_depth",
        "memo",
        "memo_capped",
        "more",
        "more_sev",
        "n",
        "nested_globals",
        "ops",
        "persid_seen",
    )

    def __init__(
        self, data: bytes, location: str, fmt: str, allow: Allowlist, depth: int, max_depth: int
    ):
        self.buf = data
        self.data = memoryview(data)
        self.n = len(data)
        self.location, self.fmt, self.allow = location, fmt, allow
        self.depth, self.max_depth = depth, max_depth
        self.findings: list[ScanFinding] = []
        self.globals: list[Global] = []
        self.more = 0
        self.more_sev = Severity.low
        self.memo: dict[int, object] = {}
        self.memo_capped = False
        self.ops = 0
        self.persid_seen = False
        self.frame = Frame()
        self.nested_globals = 0

    # ---- findings -------------------------------------------------------------------
    def emit(
        self,
        rule: str,
        severity: Severity,
        message: str,
        why: str,
        offset: int | None,
        symbol: str | None = None,
    ) -> None:
        if len(self.findings) + len(self.globals) >= MAX_FINDINGS:
            self.more += 1
            self.more_sev = _sev_max(self.more_sev, severity)
            return
        self.findings.append(
            ScanFinding(
                rule=rule,
                severity=severity,
                location=self.location,
                format=self.fmt,
                message=message,
                why=why,
                offset=offset,
                symbol=symbol,
            )
        )

    def finish(self) -> list[ScanFinding]:
        out = list(self.findings)
        for g in self.globals:
            out.append(self._global_finding(g))
        out.sort(key=lambda f: f.offset if f.offset is not None else -1)
        if self.more:
            out.append(
                ScanFinding(
                    rule="pickle.more",
                    severity=self.more_sev,
                    location=self.location,
                    format=self.fmt,
                    message=f"… {self.more} more findings not listed (limit {MAX_FINDINGS} per member)",
                    why="the stream holds more problems than are reported one by one",
                )
            )
        return out

    def _global_finding(self, g: Global) -> ScanFinding:
        critical = g.called or g.dangerous
        sev = Severity.critical if critical else Severity.high
        called = f", called by {g.via}" if g.called else ", referenced only"
        if g.rule == "pickle.global":
            msg = f"{g.opcode} {g.sym} is outside the allowlist ({'+'.join(self.allow.profiles)}){called}"
            if g.dangerous:
                why = f"{g.sym} runs code or reaches the operating system when the pickle is loaded"
            elif g.called:
                why = f"loading imports {g.sym} and calls it with arguments the file chose"
            else:
                why = f"loading imports {g.sym}, which no allowlisted format needs; a later opcode can call it"
        elif g.rule == "pickle.ext-code":
            msg = f"{g.opcode} {g.sym}: a copyreg extension code, not resolvable statically{called}"
            why = "the loader looks the code up in copyreg's extension registry of the loading process"
        else:
            msg = f"STACK_GLOBAL over operands that are not constant strings{called}"
            why = (
                "the imported module and name are computed at load time, so they cannot be checked"
            )
        return ScanFinding(
            rule=g.rule,
            severity=sev,
            location=self.location,
            format=self.fmt,
            message=msg,
            why=why,
            offset=g.offset,
            symbol=g.sym,
        )

    def new_global(
        self,
        module: str | None,
        name: str | None,
        offset: int,
        opcode: str,
        rule: str = "pickle.global",
    ) -> Global:
        if module is None or name is None:
            sym, allowed, dangerous = (name or "?"), False, False
            if rule == "pickle.global":
                rule = "pickle.unresolved-global"
        else:
            sym = f"{module}.{name}"
            allowed = self.allow.allowed(module, name)
            dangerous = not allowed and is_dangerous(module, name)
        g = Global(sym, offset, opcode, rule, allowed, dangerous)
        if not allowed:
            if len(self.findings) + len(self.globals) < MAX_FINDINGS:
                self.globals.append(g)
            else:
                self.more += 1
                self.more_sev = _sev_max(
                    self.more_sev, Severity.critical if dangerous else Severity.high
                )
        return g

    def call(self, callee: object, opcode: str, offset: int) -> None:
        if isinstance(callee, Global):
            if not callee.called:
                callee.called, callee.via = True, f"{opcode} at offset {offset}"
                if not callee.allowed and callee not in self.globals:
                    self.more_sev = Severity.critical
            return
        self.emit(
            "pickle.call-unknown",
            Severity.high,
            f"{opcode} calls an object that is not a named global",
            "the callable is built at load time (a constructed object or a computed value); "
            "its behaviour cannot be checked",
            offset,
        )

    # ---- stack ----------------------------------------------------------------------
    def push(self, v: object) -> None:
        st = self.frame.stack
        if len(st) >= MAX_STACK:
            raise Stop(f"stack deeper than {MAX_STACK} items")
        st.append(v)

    def pop(self, at: int) -> object:
        st, marks = self.frame.stack, self.frame.marks
        if len(st) <= (marks[-1] if marks else 0):
            raise Malformed(at, "stack underflow")
        return st.pop()

    def top(self, at: int) -> object:
        st, marks = self.frame.stack, self.frame.marks
        if len(st) <= (marks[-1] if marks else 0):
            raise Malformed(at, "stack underflow")
        return st[-1]

    def pop_mark(self, at: int) -> list[object]:
        st, marks = self.frame.stack, self.frame.marks
        if not marks:
            raise Malformed(at, "no MARK on the stack")
        k = marks.pop()
        items = st[k:]
        del st[k:]
        return items

    # ---- argument readers --------------------------------------------------------------
    def need(self, pos: int, k: int, at: int) -> None:
        if k < 0 or pos + k > self.n:
            raise Malformed(at, f"truncated: needs {k} bytes at offset {pos}, {self.n - pos} left")

    def line(self, pos: int, at: int) -> tuple[bytes, int]:
        end = self.buf.find(b"\n", pos)
        if end < 0:
            raise Malformed(at, "truncated: newline-terminated argument without newline")
        return self.buf[pos:end], end + 1

    def uint(self, pos: int, k: int, at: int, signed: bool = False) -> tuple[int, int]:
        self.need(pos, k, at)
        return int.from_bytes(self.data[pos : pos + k], "little", signed=signed), pos + k

    def blob(self, pos: int, k: int, at: int) -> tuple[int, int, int]:
        """Length-prefixed argument: (start, length, next position)."""
        ln, p = self.uint(pos, k, at)
        self.need(p, ln, at)
        return p, ln, p + ln

    # ---- values ---------------------------------------------------------------------
    def text(self, start: int, ln: int, at: int, encoding: str) -> object:
        self.nested(start, ln, at, is_text=encoding == "utf-8")
        if ln > MAX_VALUE:
            return ANY
        try:
            return bytes(self.data[start : start + ln]).decode(
                encoding, "surrogatepass" if encoding == "utf-8" else "strict"
            )
        except UnicodeDecodeError as exc:
            raise Malformed(at, f"invalid {encoding} string") from exc

    def raw(self, start: int, ln: int, at: int) -> object:
        self.nested(start, ln, at, is_text=False)
        return bytes(self.data[start : start + ln]) if ln <= MAX_VALUE else ANY

    def nested(self, start: int, ln: int, at: int, *, is_text: bool) -> None:
        """Scan a byte/str argument that itself looks like a pickle (``!bytes@OFFSET``)."""
        if ln < 4 or not may_nest(self.buf, start, start + ln):
            return
        head = bytes(self.data[start : start + min(ln, 256)])
        payload: bytes | None = None
        if is_text and head.startswith(b"\xc2\x80"):
            try:
                payload = bytes(self.data[start : start + ln]).decode("utf-8").encode("latin-1")
            except (UnicodeDecodeError, UnicodeEncodeError):
                return
        elif (head[0] == 0x80 and head[1] <= 5) or _PROTO0_GLOBAL.match(head):
            payload = bytes(self.data[start : start + ln])
        if payload is None or not (payload[0] != 0x80 or payload[1] <= 5):
            return
        where = f"{self.location}!bytes@{start}"
        if self.depth >= self.max_depth:
            self.emit(
                "pickle.nesting",
                Severity.high,
                f"pickle nested deeper than {self.max_depth} levels",
                "nested pickles are unpickled by code that loads the outer one; this one was not analysed",
                start,
            )
            return
        inner = Walker(payload, where, "pickle", self.allow, self.depth + 1, self.max_depth)
        inner.run()
        found = inner.finish()
        named = [f for f in found if f.rule != "pickle.malformed"]
        if not named:
            return  # data that merely starts like a pickle
        for f in found:
            if len(self.findings) + len(self.globals) < MAX_FINDINGS:
                self.findings.append(f)
            else:
                self.more += 1
                self.more_sev = _sev_max(self.more_sev, f.severity)

    # ---- the walk ---------------------------------------------------------------------
    def run(self) -> None:
        pos, count = 0, 0
        try:
            if self.n == 0:
                raise Malformed(0, "empty stream")
            while pos < self.n:
                pos = self.walk_one(pos)
                count += 1
                if pos >= self.n or (self.fmt == "torch-legacy" and count >= _LEGACY_PICKLES):
                    break
                if self.data[pos] not in _HANDLERS:
                    self.emit(
                        "pickle.trailing-data",
                        Severity.low,
                        f"{self.n - pos} bytes after the last STOP are not a pickle",
                        "pickle.load ignores them, but a loader that reads on may interpret them",
                        pos,
                    )
                    break
        except Malformed as exc:
            self.emit(
                "pickle.malformed",
                Severity.high,
                f"malformed pickle: {exc.reason}",
                "the stream cannot be analysed past this point; loaders may still run what precedes it",
                exc.offset,
            )
        except Stop as exc:
            self.emit(
                "pickle.limits",
                Severity.high,
                f"analysis stopped: {exc}",
                "the rest of the stream was not analysed",
                None,
            )

    def walk_one(self, pos: int) -> int:
        """Walk one pickle from ``pos`` to just after its STOP; return that position
        (the loop is :func:`bastion.scan.pickle_walk.walk_one`)."""
        return walk_one(self, pos)


def scan_pickle(
    data: bytes,
    *,
    location: str,
    fmt: str = "pickle",
    allow: Allowlist,
    depth: int = 0,
    max_depth: int = 4,
) -> list[ScanFinding]:
    """Statically analyse one pickle stream (possibly several pickles in a row).

    ``fmt`` words the findings and selects format conventions: ``torch-zip`` and
    ``torch-legacy`` accept persistent ids (torch's storages), ``torch-legacy`` stops after
    its five pickles (raw storage bytes follow). Returns findings sorted by offset; never
    raises on hostile input. ``depth``/``max_depth`` bound the recursion into pickles nested
    in byte strings (their findings are located ``LOCATION!bytes@OFFSET``).
    """
    w = Walker(bytes(data), location, fmt, allow, depth, max_depth)
    w.run()
    return w.finish()
