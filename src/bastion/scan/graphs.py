"""Graph formats for ``bastion scan``: ONNX and Keras (``.keras`` zips and HDF5 ``.h5``).

ONNX (``onnx/onnx.proto``): the ModelProto is parsed with ``load_external_data=False``; an
initializer whose ``external_data`` ``location`` is absolute or climbs out of the model's
folder with ``..`` makes the runtime read an arbitrary file (high: e.g. CVE-2022-25882); a
node of a custom operator domain needs a custom-op library (low). Subgraphs (If, Loop,
Scan bodies) and model-local functions are walked too.

Keras (Keras 3 ``saving_lib``: ``config.json`` in a zip; Keras 2 HDF5: the ``model_config``
attribute): a ``Lambda`` layer carries marshalled Python bytecode and a ``module`` /
``registered_name`` outside ``keras`` imports user code on load (critical; CVE-2024-3660).
Only the JSON is read; no weights, nothing imported.
"""

from __future__ import annotations

import json
import posixpath
import zipfile
import zlib
from collections.abc import Iterator
from typing import Any

from bastion.scan.source import Member, Scan

STANDARD_DOMAINS = {"", "ai.onnx", "ai.onnx.ml", "com.microsoft", "ai.onnx.preview.training"}


def onnx_location_escapes(location: str) -> bool:
    """True when an external-data path is absolute or leaves the model's folder."""
    loc = location.replace("\\", "/")
    if loc.startswith("/") or (len(loc) > 1 and loc[1] == ":"):
        return True
    norm = posixpath.normpath(loc)
    return norm == ".." or norm.startswith("../")


def _graphs(graph: Any) -> Iterator[Any]:
    from onnx import AttributeProto

    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == AttributeProto.GRAPHS:
                for g in attr.graphs:
                    yield from _graphs(g)


def _tensors(graph: Any) -> Iterator[Any]:
    from onnx import AttributeProto

    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == AttributeProto.TENSOR:
                yield attr.t
            elif attr.type == AttributeProto.TENSORS:
                yield from attr.tensors


def scan_onnx(scan: Scan, m: Member, depth: int) -> bool:
    """False when the bytes are not an ONNX model (the caller then treats them as unknown)."""
    import onnx

    try:
        with m.open() as fh:
            model = onnx.load(fh, load_external_data=False)
    except Exception:  # protobuf DecodeError and friends: not ONNX
        return False
    if not model.HasField("graph") and not model.opset_import:
        return False
    scan.note("onnx")
    loc = m.location
    seen: set[tuple[str, str]] = set()
    graphs = list(_graphs(model.graph))
    for fn in model.functions:
        graphs.append(fn)
    for graph in graphs:
        for tensor in _tensors(graph) if hasattr(graph, "initializer") else ():
            for entry in tensor.external_data:
                if entry.key == "location" and onnx_location_escapes(entry.value):
                    scan.add(
                        "onnx.external-data",
                        "high",
                        loc,
                        "onnx",
                        f"tensor {tensor.name!r} reads external data from {entry.value!r}, "
                        "outside the model's folder",
                        why="the runtime reads (and may expose) any file the path names",
                        symbol=entry.value,
                    )
        for node in graph.node:
            key = (node.domain, node.op_type)
            if node.domain not in STANDARD_DOMAINS and key not in seen:
                seen.add(key)
                scan.add(
                    "onnx.custom-op",
                    "low",
                    loc,
                    "onnx",
                    f"operator {node.op_type} of custom domain {node.domain!r}",
                    why="running the model needs a custom-operator library (native code)",
                    symbol=f"{node.domain}.{node.op_type}",
                )
    return True


# --- Keras ---------------------------------------------------------------------------------


def _keras_module_ok(module: Any) -> bool:
    return module is None or (
        isinstance(module, str) and (module == "keras" or module.startswith("keras."))
    )


def keras_config_findings(config: Any) -> list[tuple[str, str, str]]:
    """``(rule, symbol, message)`` for each code-carrying construct in a Keras config."""
    out: list[tuple[str, str, str]] = []
    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        stack.extend(node.values())
        cls = node.get("class_name")
        if cls in ("Lambda", "__lambda__"):
            name = (
                (node.get("config") or {}).get("name", "?")
                if isinstance(node.get("config"), dict)
                else "?"
            )
            out.append(("keras.lambda", str(cls), f"{cls} layer {name!r}: marshalled bytecode"))
        module = node.get("module")
        if "class_name" in node and not _keras_module_ok(module):
            out.append(("keras.module", f"{module}.{cls}", f"class {cls} from module {module!r}"))
        reg = node.get("registered_name")
        if isinstance(reg, str) and ">" in reg and not reg.lower().startswith("keras"):
            out.append(("keras.module", reg, f"registered object {reg!r} outside keras"))
    return out


def _report_keras(scan: Scan, config: Any, location: str, fmt: str) -> None:
    for rule, symbol, message in keras_config_findings(config):
        scan.add(
            rule,
            "critical",
            location,
            fmt,
            message,
            why="loading the model runs this Python code (Lambda bytecode or imported module)",
            symbol=symbol,
        )


def scan_keras_config(scan: Scan, zf: zipfile.ZipFile, location: str) -> None:
    try:
        info = zf.getinfo("config.json")
        if info.file_size > scan.limits.max_header_bytes:
            scan.add("keras.config", "medium", location, "keras", "config.json too large")
            return
        with zf.open(info) as fh:
            config = json.loads(fh.read(scan.limits.max_header_bytes + 1))
    except (
        KeyError,
        ValueError,
        OSError,
        EOFError,
        NotImplementedError,
        zlib.error,
        zipfile.BadZipFile,
        RecursionError,
    ) as exc:
        scan.add("keras.config", "medium", location, "keras", f"unreadable config.json ({exc})")
        return
    _report_keras(scan, config, f"{location}!config.json", "keras")


def scan_h5(scan: Scan, m: Member, depth: int) -> None:
    import h5py

    scan.note("hdf5")
    try:
        with m.open() as fh, h5py.File(fh, "r") as f:
            raw = f.attrs.get("model_config")
    except Exception as exc:  # h5py raises OSError/KeyError/ValueError on bad files
        scan.add("hdf5.malformed", "medium", m.location, "hdf5", f"unreadable HDF5 ({exc})")
        return
    if raw is None:
        return
    scan.note("keras-h5")
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
        config = json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        scan.add("keras.config", "medium", m.location, "keras-h5", f"bad model_config ({exc})")
        return
    _report_keras(scan, config, m.location, "keras-h5")
