"""The ``bastion scan`` engine: sniff each file's format from its bytes, hand it to its
analyser, recurse into containers under :class:`ScanLimits`, and collect typed findings.

Static analysis only: nothing is unpickled, imported, rendered or executed. Pickles go to
:func:`bastion.scan.pickle_scan.scan_pickle` (an allowlist of globals); containers are in
:mod:`bastion.scan.containers`, tensor files in :mod:`bastion.scan.tensors`, GGUF in
:mod:`bastion.scan.gguf`, ONNX and Keras in :mod:`bastion.scan.graphs`.

:func:`require_clean` is what Bastion's own loading paths call first: it raises
:class:`~bastion.errors.UnsafeModelError` naming the first finding of severity high or above.
"""

from __future__ import annotations

import io
import logging
import os
import pickletools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from bastion.errors import UnsafeModelError
from bastion.scan import containers, gguf, graphs, tensors
from bastion.scan.allowlist import allowlist
from bastion.scan.findings import FileResult, ScanFinding, ScanReport, Severity
from bastion.scan.source import Member, Scan, ScanLimits

__all__ = ["ScanLimits", "require_clean", "scan_file", "scan_paths", "sniff"]

log = logging.getLogger(__name__)
HEAD = 4096
SNIFF_WINDOW = 64 * 1024
_PROTO0_START = set(b"(cdl]}SVIFNKJLMGTUXhjpgqr)tN.\x80")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".joblib")
Analyser = Callable[[Scan, Member, int], None]


def _zlib_header(head: bytes) -> bool:
    return len(head) >= 2 and head[0] == 0x78 and ((head[0] << 8) | head[1]) % 31 == 0


def _looks_pickle(head: bytes, window: bytes, name: str = "") -> bool:
    """Protocol 2+ by its PROTO header; protocols 0-1 when :func:`pickletools.dis` (a static
    parse that checks marks, stack and memo) reaches STOP within the sniff window, or when
    the name says pickle."""
    if len(head) >= 2 and head[0] == 0x80 and head[1] <= 5:
        return True
    if not head or head[0] not in _PROTO0_START:
        return False
    if name.lower().endswith(PICKLE_SUFFIXES):
        return True
    try:
        pickletools.dis(io.BytesIO(window), out=io.StringIO())
        return True
    except Exception:  # not a pickle, or one longer than the window
        pass
    if len(window) < SNIFF_WINDOW or head[:1] not in (b"(", b"c", b"]", b"}"):
        return False
    ops = 0
    try:
        for _op in pickletools.genops(io.BytesIO(window)):
            ops += 1
    except Exception:  # the window ends mid-opcode
        pass
    return ops >= 64


def sniff(head: bytes, name: str = "", size: int = 0, window: bytes = b"") -> str:
    """The format of a blob from its first bytes (``head``) and name, one of: zip, 7z, gzip,
    bz2, xz, lzma, zlib, joblib-zf, hdf5, gguf, numpy, safetensors, tar, torch-legacy,
    pickle, onnx, unknown."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith(b"7z\xbc\xaf\x27\x1c"):
        return "7z"
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"BZh"):
        return "bz2"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "hdf5"
    if head.startswith(gguf.MAGIC):
        return "gguf"
    if head.startswith(tensors.NPY_MAGIC):
        return "numpy"
    if head.startswith(b"ZF0x"):
        return "joblib-zf"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(containers.TORCH_LEGACY_MAGIC):
        return "torch-legacy"
    if tensors.looks_safetensors(head, size):
        return "safetensors"
    if head.startswith(b"\x5d\x00\x00"):  # lzma-alone; "]\x00" is no pickle
        return "lzma"
    if _looks_pickle(head, window or head, name):
        return "pickle"
    if _zlib_header(head):
        return "zlib"
    if name.lower().endswith(".onnx") or head[:1] == b"\x08":
        return "onnx"
    return "unknown"


def _read_whole(scan: Scan, m: Member) -> bytes | None:
    if m.data is not None:
        return m.data
    if m.size > scan.limits.max_member_bytes:
        scan.add(
            "scan.too-large",
            "high",
            m.location,
            "pickle",
            f"{m.size} bytes: over max_member_bytes, not analysed",
            why="content that was not analysed may run code on load",
        )
        return None
    return m.head(m.size)


def _pickle(scan: Scan, m: Member, depth: int) -> None:
    data = _read_whole(scan, m)
    if data is None:
        return
    fmt = "pickle"
    low = m.location.lower()
    if ".joblib" in low or b"joblib" in data[: 1 << 20]:
        fmt = "joblib"
    containers.run_pickle(scan, data, m.location, fmt, depth)


def _legacy(scan: Scan, m: Member, depth: int) -> None:
    data = _read_whole(scan, m)
    if data is not None:
        containers.torch_legacy(scan, m, data, depth)


def _weak(kind: str, skip: int = 0) -> Analyser:
    def analyse(scan: Scan, m: Member, depth: int) -> None:
        if not containers.scan_stream(scan, m, depth, kind, skip=skip):
            scan.note("unknown")

    return analyse


def _onnx(scan: Scan, m: Member, depth: int) -> None:
    if not graphs.scan_onnx(scan, m, depth):
        scan.note("unknown")


ANALYSERS: dict[str, Analyser] = {
    "zip": containers.scan_zip,
    "7z": containers.scan_7z,
    "tar": containers.scan_tar,
    "gzip": _weak("gzip"),
    "bz2": _weak("bz2"),
    "xz": _weak("xz"),
    "zlib": _weak("zlib"),
    "lzma": _weak("lzma"),
    "joblib-zf": _weak("zlib", skip=20),
    "hdf5": graphs.scan_h5,
    "gguf": gguf.scan_gguf,
    "numpy": tensors.scan_npy,
    "safetensors": tensors.scan_safetensors,
    "torch-legacy": _legacy,
    "pickle": _pickle,
    "onnx": _onnx,
}


def dispatch(scan: Scan, m: Member, depth: int) -> None:
    """Analyse one member (recursion entry point for containers)."""
    if depth > scan.limits.max_depth:
        containers.deep(scan, m)
        return
    scan.members += 1
    head = m.head(SNIFF_WINDOW)
    kind = sniff(head[:HEAD], m.name, m.size, head)
    analyser = ANALYSERS.get(kind)
    if analyser is None:
        scan.note("unknown")
        return
    try:
        analyser(scan, m, depth)
    except (MemoryError, RecursionError) as exc:
        _incomplete(scan, m, kind, exc)
    except Exception as exc:  # a parser bug on hostile bytes must not end the scan
        log.debug("analyser %s failed on %s", kind, m.location, exc_info=True)
        _incomplete(scan, m, kind, exc)


def _incomplete(scan: Scan, m: Member, kind: str, exc: BaseException) -> None:
    scan.add(
        "scan.incomplete",
        "high",
        m.location,
        kind,
        f"analysis stopped ({type(exc).__name__}: {str(exc)[:160]})",
        why="content that was not analysed may run code on load",
    )


def _allowlist(profiles: Sequence[str]) -> object:
    return allowlist(tuple(profiles))


def _scan_one(path: Path, allow: object, limits: ScanLimits) -> FileResult:
    try:
        size = path.stat().st_size
    except OSError as exc:
        return FileResult(path=str(path), error=f"cannot read: {exc.strerror or exc}")
    scan = Scan(limits=limits, allow=allow, dispatch=dispatch)
    error = None
    try:
        dispatch(scan, Member.from_file(path, size, SNIFF_WINDOW), 0)
    except OSError as exc:
        error = f"cannot read: {exc.strerror or exc}"
    return FileResult(
        path=str(path),
        formats=[f for f in scan.formats if f != "unknown"] or ["unknown"],
        members=scan.members,
        bytes=size,
        findings=scan.findings,
        error=error,
    )


def scan_file(
    path: Path, *, profiles: Sequence[str] = (), limits: ScanLimits = ScanLimits()
) -> FileResult:
    """Scan one file (its archive members included)."""
    return _scan_one(path if isinstance(path, Path) else Path(path), _allowlist(profiles), limits)


def walk(path: Path) -> Iterator[Path]:
    """Files under ``path`` (itself when a file), sorted; symlinks to folders are not
    followed and symlinked files that resolve outside ``path`` are skipped."""
    if not path.is_dir():
        yield path
        return
    root = path.resolve()
    for folder, dirs, files in os.walk(path, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            f = Path(folder) / name
            if f.is_symlink() and not f.resolve().is_relative_to(root):
                log.info("skipping %s: a symlink out of %s", f, path)
                continue
            if f.is_file():
                yield f


def scan_paths(
    paths: Sequence[Path], *, profiles: Sequence[str] = (), limits: ScanLimits = ScanLimits()
) -> ScanReport:
    """Scan files and folders (walked recursively) into one report."""
    start = time.perf_counter()
    allow = _allowlist(profiles)
    files = [_scan_one(f, allow, limits) for p in paths for f in walk(Path(p))]
    return ScanReport(
        profiles=list(profiles), files=files, seconds=round(time.perf_counter() - start, 4)
    )


def refusal(path: Path | str, finding: ScanFinding) -> str:
    """One line: why a loading path refuses ``path``."""
    symbol = f" {finding.symbol}" if finding.symbol else ""
    offset = f"@{finding.offset}" if finding.offset is not None else ""
    return (
        f"{path}: refused by bastion scan: {finding.rule}{symbol} at "
        f"{finding.location}{offset}: {finding.message}"
    )


def require_clean(path: Path, *, profiles: Sequence[str] = ()) -> None:
    """Raise UnsafeModelError with the first finding of severity high or above in ``path``
    (a file, or every file of a folder)."""
    report = scan_paths([Path(path)], profiles=profiles)
    for finding in report.findings:
        if finding.severity.rank >= Severity.high.rank:
            raise UnsafeModelError(refusal(path, finding))
