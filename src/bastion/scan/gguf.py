"""GGUF files for ``bastion scan`` (ggml ``docs/gguf.md``): the header is parsed by hand
(magic ``GGUF``, version 1–3, tensor count, metadata KV count, typed values) with every
length bounded, and each ``tokenizer.chat_template*`` value, a Jinja2 program that llama.cpp
front-ends and ``transformers`` render, is parsed (never rendered) with
:class:`jinja2.sandbox.ImmutableSandboxedEnvironment`. Templates that reach beyond what a
chat template needs (dunder attributes, ``|attr``, the globals whose ``__init__.__globals__``
lead to ``os``: ``cycler``, ``joiner``, ``lipsum``, ``self``) are critical: server-side
template injection, e.g. CVE-2024-34359 (llama-cpp-python).

``namespace`` and ``range`` are not flagged on their own: ordinary chat templates use them.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, BinaryIO

from bastion.scan.source import Member, Scan

MAGIC = b"GGUF"
# value type -> struct code (fixed-size scalars)
_SCALAR = {
    0: "B",
    1: "b",
    2: "H",
    3: "h",
    4: "I",
    5: "i",
    6: "f",
    7: "?",
    10: "Q",
    11: "q",
    12: "d",
}
STRING, ARRAY = 8, 9
MAX_KV = 1_000_000
MAX_ARRAY = 50_000_000
TEMPLATE_KEY = "tokenizer.chat_template"
MAX_TEMPLATE = 1 << 20

BAD_ATTRS = {
    "mro",
    "popen",
    "system",
    "os",
    "subprocess",
    "eval",
    "exec",
    "import_module",
    "func_globals",
    "f_globals",
    "f_locals",
    "f_back",
    "gi_frame",
    "gi_code",
    "tb_frame",
    "co_code",
    "builtins",
    "globals",
    "getattr",
    "modules",
}
BAD_NAMES = {"cycler", "joiner", "lipsum", "self", "config", "request", "url_for", "os"}


class _GGUFError(ValueError):
    pass


class _Reader:
    def __init__(self, fh: BinaryIO, size: int, big: bool, version: int, budget: int) -> None:
        self.fh, self.size, self.end = fh, size, "<>"[big]
        self.version, self.budget = version, budget

    def take(self, n: int) -> bytes:
        if n > self.budget:
            raise _GGUFError(f"header exceeds the {self.budget}-byte limit")
        raw = self.fh.read(n)
        if len(raw) != n:
            raise _GGUFError("truncated header")
        self.budget -= n
        return raw

    def skip(self, n: int) -> None:
        if n > self.budget or self.fh.tell() + n > self.size:
            raise _GGUFError("header runs past its limit or the end of the file")
        self.budget -= n
        self.fh.seek(n, 1)

    def unpack(self, code: str) -> Any:
        return struct.unpack(self.end + code, self.take(struct.calcsize(code)))[0]

    def count(self) -> int:
        return self.unpack("I" if self.version == 1 else "Q")

    def string(self, keep: bool = True) -> str | None:
        n = self.count()
        if not keep:
            self.skip(n)
            return None
        return self.take(n).decode("utf-8", "replace")

    def value(self, vtype: int, keep: bool) -> Any:
        if vtype in _SCALAR:
            if keep:
                return self.unpack(_SCALAR[vtype])
            self.skip(struct.calcsize(_SCALAR[vtype]))
            return None
        if vtype == STRING:
            return self.string(keep)
        if vtype == ARRAY:
            itype, n = self.unpack("I"), self.count()
            if n > MAX_ARRAY:
                raise _GGUFError(f"array of {n} items")
            if itype in _SCALAR:
                self.skip(n * struct.calcsize(_SCALAR[itype]))
                return None
            for _ in range(n):
                self.value(itype, False)
            return None
        raise _GGUFError(f"unknown value type {vtype}")


def scan_gguf(scan: Scan, m: Member, depth: int) -> None:
    scan.note("gguf")
    templates: list[tuple[str, str, int]] = []
    try:
        with m.open() as fh:
            fh.seek(4)
            raw = fh.read(4)
            if len(raw) < 4:
                raise _GGUFError("truncated header")
            version, big = struct.unpack("<I", raw)[0], False
            if version > 0xFFFF:
                version, big = struct.unpack(">I", raw)[0], True
            if version not in (1, 2, 3):
                raise _GGUFError(f"unsupported GGUF version {version}")
            r = _Reader(fh, m.size, big, version, scan.limits.max_header_bytes)
            _tensors, kvs = r.count(), r.count()
            if kvs > MAX_KV:
                raise _GGUFError(f"{kvs} metadata entries")
            for _ in range(kvs):
                key = r.string() or ""
                vtype = r.unpack("I")
                pos = fh.tell()
                keep = vtype == STRING and key.startswith(TEMPLATE_KEY)
                val = r.value(vtype, keep)
                if keep and isinstance(val, str):
                    templates.append((key, val, pos))
    except (_GGUFError, struct.error, OSError, MemoryError) as exc:
        scan.add("gguf.header", "medium", m.location, "gguf", f"malformed GGUF header ({exc})")
    for key, text, pos in templates:
        check_template(scan, text, f"{m.location}", key, pos)


@functools.cache
def _jinja() -> Any:
    """One sandboxed environment, reused: it only parses (its lexer is cached per
    environment), never renders."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return ImmutableSandboxedEnvironment()


def check_template(scan: Scan, text: str, location: str, key: str, offset: int | None) -> None:
    """Findings for one Jinja2 chat template (parsed, never rendered)."""
    from jinja2 import TemplateSyntaxError, nodes

    tag_types = (nodes.Import, nodes.FromImport, nodes.Include, nodes.Extends)
    why = (
        "the template runs when a chat is formatted; reaching object internals escapes "
        "the Jinja sandbox to run code on the server"
    )
    if len(text) > MAX_TEMPLATE:
        scan.add("gguf.template-size", "medium", location, "gguf", f"{key}: {len(text)} chars")
        return
    try:
        tree = _jinja().parse(text)
    except (TemplateSyntaxError, RecursionError) as exc:
        scan.add(
            "gguf.template-syntax", "medium", location, "gguf", f"{key}: not valid Jinja ({exc})"
        )
        return
    hits: list[tuple[str, str]] = []
    tags: dict[type, list[tuple[str, str]]] = {tag: [] for tag in tag_types}
    # one walk of the tree; tag hits are reported after the others, tag by tag
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Name, nodes.Filter, *tag_types)):
        if isinstance(node, nodes.Getattr):
            if node.attr.startswith("__") or node.attr in BAD_ATTRS:
                hits.append((f".{node.attr}", "attribute"))
        elif isinstance(node, nodes.Getitem):
            arg = node.arg
            if (
                isinstance(arg, nodes.Const)
                and isinstance(arg.value, str)
                and (arg.value.startswith("__") or arg.value in BAD_ATTRS)
            ):
                hits.append((f"[{arg.value!r}]", "item"))
        elif isinstance(node, nodes.Name):
            if node.name in BAD_NAMES or node.name.startswith("__"):
                hits.append((node.name, "global"))
        elif isinstance(node, nodes.Filter):
            if node.name == "attr":
                hits.append(("|attr", "filter"))
        else:
            tags[type(node)].append((type(node).__name__.lower(), "tag"))
    for tag_hits in tags.values():
        hits.extend(tag_hits)
    seen: set[str] = set()
    for symbol, what in hits:
        if symbol in seen:
            continue
        seen.add(symbol)
        scan.add(
            "gguf.template",
            "critical",
            location,
            "gguf",
            f"{key}: Jinja {what} {symbol} reaches beyond the sandboxed chat-template subset",
            why=why,
            offset=offset,
            symbol=symbol,
        )
