"""Tensor files for ``bastion scan``: safetensors and NumPy ``.npy``.

safetensors (Hugging Face, ``safetensors`` format spec): an 8-byte little-endian header
length N, N bytes of a JSON object mapping tensor names to ``{dtype, shape, data_offsets}``
(and an optional ``__metadata__`` string→string map), then the data area. Only the header is
read: the checks are the spec's (offsets inside the data area, contiguous, non-overlapping,
``prod(shape) * itemsize == end - begin``). An anomaly is a ``safetensors.*`` finding of
severity medium: loaders that validate differently may read different tensors.

``.npy`` (NumPy NEP 1, format versions 1.0–3.0): magic ``\\x93NUMPY``, version, header length,
then a Python-literal dict. It is parsed here by a strict literal reader (dicts, lists,
tuples, strings, ints, booleans, ``None``), never ``eval`` or :func:`ast.literal_eval`.
An ``object`` dtype means the payload is a pickle: it is handed to the pickle walker.
"""

from __future__ import annotations

import json
import math
import re
import struct
from typing import Any

from bastion.scan.source import Member, Scan

# bits per element
SAFETENSORS_BITS = {
    "BOOL": 8,
    "U8": 8,
    "I8": 8,
    "F8_E5M2": 8,
    "F8_E4M3": 8,
    "F8_E8M0": 8,
    "I16": 16,
    "U16": 16,
    "F16": 16,
    "BF16": 16,
    "I32": 32,
    "U32": 32,
    "F32": 32,
    "F64": 64,
    "I64": 64,
    "U64": 64,
    "C64": 64,
    "F4": 4,
    "F6_E2M3": 6,
    "F6_E3M2": 6,
}


def looks_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    n = struct.unpack("<Q", head[:8])[0]
    return n >= 2 and head[8:9] == b"{"  # sizes are checked, as findings, by the scan


def scan_safetensors(scan: Scan, m: Member, depth: int) -> None:
    scan.note("safetensors")
    loc = m.location

    def bad(rule: str, message: str, symbol: str | None = None, offset: int | None = None) -> None:
        scan.add(
            f"safetensors.{rule}",
            "medium",
            loc,
            "safetensors",
            message,
            why="loaders that validate differently may read different bytes as tensors",
            symbol=symbol,
            offset=offset,
        )

    size = m.size
    with m.open() as fh:
        raw = fh.read(8)
        if len(raw) < 8:
            bad("truncated", "shorter than the 8-byte header length")
            return
        n = struct.unpack("<Q", raw)[0]
        if n > scan.limits.max_header_bytes:
            bad(
                "header", f"header length {n} exceeds the {scan.limits.max_header_bytes}-byte limit"
            )
            return
        if 8 + n > size:
            bad("header", f"header length {n} runs past the end of the file ({size} bytes)")
            return
        text = fh.read(n)
    try:
        pairs_seen: list[str] = []

        def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
            keys = [k for k, _ in pairs]
            if len(set(keys)) != len(keys):
                pairs_seen.extend(sorted({k for k in keys if keys.count(k) > 1}))
            return dict(pairs)

        header = json.loads(text.decode("utf-8"), object_pairs_hook=hook)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        bad("json", f"header is not valid UTF-8 JSON ({str(exc)[:120]})", offset=8)
        return
    if not isinstance(header, dict):
        bad("json", f"header is a JSON {type(header).__name__}, not an object", offset=8)
        return
    if pairs_seen:
        bad("duplicate", f"duplicate header keys: {', '.join(pairs_seen[:5])}", pairs_seen[0])
    data_len = size - 8 - n
    meta = header.pop("__metadata__", None)
    if meta is not None and not (
        isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())
    ):
        bad("metadata", "__metadata__ must map strings to strings", "__metadata__")
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        span = _tensor_span(info, data_len)
        if isinstance(span, str):
            bad("tensor", f"tensor {name!r}: {span}", name)
        else:
            spans.append((span[0], span[1], name))
    spans.sort()
    pos = 0
    for begin, end, name in spans:
        if begin < pos:
            bad("overlap", f"tensor {name!r} overlaps the previous one at {begin}", name)
        elif begin > pos:
            bad("gap", f"{begin - pos} unreferenced bytes before tensor {name!r}", name)
        pos = max(pos, end)
    if spans and pos < data_len:
        bad("trailing", f"{data_len - pos} bytes after the last tensor are not referenced")


def _tensor_span(info: Any, data_len: int) -> tuple[int, int] | str:
    if not isinstance(info, dict):
        return "entry is not an object"
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in SAFETENSORS_BITS:
        return f"unknown dtype {dtype!r}"
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        return f"shape {shape!r} is not a list of non-negative integers"
    if (
        not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
    ):
        return f"data_offsets {offsets!r} is not [begin, end]"
    begin, end = offsets
    if not 0 <= begin <= end <= data_len:
        return f"data_offsets {offsets} outside the data area (0..{data_len})"
    bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
    if bits % 8 or bits // 8 != end - begin:
        return f"{dtype}{shape} needs {bits / 8:g} bytes, data_offsets span {end - begin}"
    return begin, end


# --- .npy ----------------------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"
_TOKEN = re.compile(
    r"""\s*(?:(?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")|(?P<int>-?\d+)|(?P<word>True|False|None)|(?P<punct>[{}()\[\]:,]))""",
    re.S,
)


class _LiteralError(ValueError):
    pass


def parse_literal(text: str) -> Any:
    """A Python literal of dicts, lists, tuples, strings, ints, booleans and None (strict:
    anything else raises ValueError). Strings must not contain escapes other than ``\\'``."""
    tokens = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if m is None:
            raise _LiteralError(f"unexpected {text[pos : pos + 10]!r}")
        tokens.append((m.lastgroup, m.group(m.lastgroup)))
        pos = m.end()
    value, i = _parse(tokens, 0, 0)
    if i != len(tokens):
        raise _LiteralError("trailing tokens")
    return value


def _parse(tokens: list[tuple[str, str]], i: int, level: int) -> tuple[Any, int]:
    if level > 20 or i >= len(tokens):
        raise _LiteralError("too deep or truncated")
    kind, tok = tokens[i]
    if kind == "str":
        body = tok[1:-1]
        if "\\" in body.replace("\\'", "").replace('\\"', ""):
            raise _LiteralError("escapes are not accepted")
        return body.replace("\\'", "'").replace('\\"', '"'), i + 1
    if kind == "int":
        if len(tok) > 20:
            raise _LiteralError("integer too long")
        return int(tok), i + 1
    if kind == "word":
        return {"True": True, "False": False, "None": None}[tok], i + 1
    closing = {"{": "}", "(": ")", "[": "]"}.get(tok)
    if closing is None:
        raise _LiteralError(f"unexpected {tok!r}")
    i += 1
    items: list[Any] = []
    pairs: dict[Any, Any] = {}
    while True:
        if i < len(tokens) and tokens[i][1] == closing:
            i += 1
            break
        key, i = _parse(tokens, i, level + 1)
        if tok == "{":
            if i >= len(tokens) or tokens[i][1] != ":" or not isinstance(key, str):
                raise _LiteralError("bad dict entry")
            val, i = _parse(tokens, i + 1, level + 1)
            pairs[key] = val
        else:
            items.append(key)
        if i < len(tokens) and tokens[i][1] == ",":
            i += 1
        elif i >= len(tokens) or tokens[i][1] != closing:
            raise _LiteralError("missing separator")
    if tok == "{":
        return pairs, i
    return (tuple(items) if tok == "(" else items), i


def _has_object(descr: Any) -> bool:
    if isinstance(descr, str):
        return descr.lstrip("|<>=").startswith("O")
    if isinstance(descr, (list, tuple)):
        return any(_has_object(d) for d in descr)
    return False


def scan_npy(scan: Scan, m: Member, depth: int) -> None:
    from bastion.scan.containers import run_pickle

    scan.note("numpy")
    loc = m.location
    head = m.head(12 + min(scan.limits.max_header_bytes, 1 << 20))
    major = head[6] if len(head) > 6 else 0

    def bad(message: str) -> None:
        scan.add("numpy.header", "medium", loc, "numpy", message, offset=0)

    if major == 1 and len(head) >= 10:
        hlen, start = struct.unpack("<H", head[8:10])[0], 10
    elif major in (2, 3) and len(head) >= 12:
        hlen, start = struct.unpack("<I", head[8:12])[0], 12
    else:
        bad(f"unsupported .npy version {major}")
        return
    if start + hlen > len(head):
        bad(f"header length {hlen} runs past the file or the header limit")
        return
    try:
        text = head[start : start + hlen].decode("utf-8" if major == 3 else "latin-1")
        header = parse_literal(text)
    except (UnicodeDecodeError, ValueError) as exc:
        bad(f"header is not a plain literal dict ({exc})")
        return
    if not isinstance(header, dict) or not {"descr", "fortran_order", "shape"} <= set(header):
        bad("header lacks descr, fortran_order or shape")
        return
    if _has_object(header["descr"]):
        data = m.data if m.data is not None else m.head(m.size)
        run_pickle(scan, data[start + hlen :], loc, "numpy", depth, base=start + hlen)
