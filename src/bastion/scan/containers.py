"""Containers for ``bastion scan``: zip (torch zip, TorchScript, .npz, .keras, skops), tar
(legacy torch tar), 7z (py7zr), single-stream compressors (gzip, bz2, xz, lzma, zlib: also
compressed joblib) and the legacy torch non-zip format (pickles one after another).

Every member is read in capped chunks (:meth:`bastion.scan.source.Scan.read_capped`) and
handed back to the engine's dispatcher one level deeper, so nesting, member counts and
inflated bytes are bounded. Formats: PKWARE APPNOTE 6.3.10 (zip), POSIX.1-2001 ustar,
RFC 1950/1952 (zlib/gzip), the 7z format (7-Zip ``7zFormat.txt``), PyTorch
``torch/serialization.py`` (zip, tar and legacy layouts).
"""

from __future__ import annotations

import bz2
import io
import lzma
import pickletools
import posixpath
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

from bastion.scan.pickle_scan import scan_pickle
from bastion.scan.source import CHUNK, Member, Overflow, Scan

PICKLE_FORMATS = ("torch-zip", "torchscript", "torch-tar", "torch-legacy")
# TorchScript's data.pkl names its compiled classes ``__torch__.*``; debug_pkl uses
# ``torch.jit._pickle.build_*`` (torch/csrc/jit/serialization/unpickler.cpp)
TORCHSCRIPT_GLOBALS = ("__torch__.", "torch.jit._pickle.")
# torch's storages are persistent ids in these too: the walker's torch-zip conventions apply
_WALKER_FORMAT = {"torchscript": "torch-zip", "torch-tar": "torch-zip"}
TORCH_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
_STORAGE = re.compile(r"(^|/)(\.?data)/[^/]+$")  # torch zip raw tensor storages
_CODE_DIR = re.compile(r"(^|/)code/")  # TorchScript's compiled code


def run_pickle(scan: Scan, data: bytes, location: str, fmt: str, depth: int, base: int = 0) -> None:
    """Hand one pickle to the opcode walker (never unpickled); ``base`` is where it starts
    in its member, so offsets are the member's."""
    scan.note(fmt)
    found = scan_pickle(
        data,
        location=location,
        fmt=_WALKER_FORMAT.get(fmt, fmt),
        allow=scan.allow,
        depth=depth,
        max_depth=scan.limits.max_depth,
    )
    for f in found:
        if fmt == "torchscript" and (f.symbol or "").startswith(TORCHSCRIPT_GLOBALS):
            continue  # resolved against the archive's compiled TorchScript, not imported
        if f.format != fmt:
            f = f.model_copy(update={"format": fmt})
        if base and f.offset is not None:
            f = f.model_copy(update={"offset": f.offset + base})
        scan.findings.append(f)


def pickle_spans(data: bytes, limit: int) -> list[tuple[int, int]]:
    """``(start, end)`` of up to ``limit`` pickles written one after another at the start of
    ``data`` (static parse with :func:`pickletools.genops`; stops at the first non-pickle)."""
    spans: list[tuple[int, int]] = []
    stream = io.BytesIO(data)  # one stream: genops reports absolute positions
    start = 0
    while start < len(data) and len(spans) < limit:
        stream.seek(start)
        end = None
        try:
            for op, _arg, pos in pickletools.genops(stream):
                if op.name == "STOP":
                    end = (pos or 0) + 1
                    break
        except Exception:  # not (or no longer) a pickle: raw storage bytes follow
            end = None
        if end is None:
            break
        spans.append((start, end))
        start = end
    return spans


def torch_legacy(scan: Scan, m: Member, data: bytes, depth: int) -> None:
    """``torch.save(..., _use_new_zipfile_serialization=False)``: magic number, protocol,
    sys_info, the object, the storage keys, then raw storages."""
    scan.note("torch-legacy")
    spans = pickle_spans(data, 5)
    if not spans:
        run_pickle(scan, data, m.location, "torch-legacy", depth)
        return
    for start, end in spans:
        run_pickle(scan, data[start:end], m.location, "torch-legacy", depth, base=start)


def _unsafe_name(name: str) -> bool:
    if name.startswith(("/", "\\")) or ":" in name[:3]:
        return True
    if ".." not in name:
        return False  # normalising cannot climb without a ".." component
    norm = posixpath.normpath(name.replace("\\", "/"))
    return norm == ".." or norm.startswith("../")


def _check_name(scan: Scan, name: str, location: str, fmt: str) -> None:
    if _unsafe_name(name):
        scan.add(
            "archive.path",
            "medium",
            location,
            fmt,
            f"member name {name!r} is absolute or leaves the extraction folder",
            why="an extractor writing members to disk would write outside its folder",
            symbol=name,
        )


def _too_many(scan: Scan, count: int, location: str, fmt: str) -> bool:
    if count <= scan.limits.max_members:
        return False
    scan.add(
        "archive.members",
        "high",
        location,
        fmt,
        f"more than {scan.limits.max_members} members: the rest were not analysed",
        why="a member that was not analysed may hold code that runs on load",
    )
    return True


def classify_zip(names: list[str]) -> str:
    """What a zip is, from its member names."""
    if any(n.endswith(".pkl") for n in names):
        if any(_CODE_DIR.search(n) for n in names) and any(
            n.endswith("constants.pkl") for n in names
        ):
            return "torchscript"
        return "torch-zip"
    if "config.json" in names and ({"metadata.json", "model.weights.h5"} & set(names)):
        return "keras"
    if "schema.json" in names:
        return "skops"
    files = [n for n in names if not n.endswith("/")]
    if files and all(n.endswith(".npy") for n in files):
        return "npz"
    return "zip"


def scan_zip(scan: Scan, m: Member, depth: int) -> None:
    try:
        zf = zipfile.ZipFile(m.open())
        infos = zf.infolist()
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        ValueError,
        EOFError,
        NotImplementedError,
    ) as exc:
        scan.note("zip")
        scan.add("archive.malformed", "medium", m.location, "zip", f"unreadable zip ({exc})")
        return
    kind = classify_zip([i.filename for i in infos])
    scan.note(kind)
    if _too_many(scan, len(infos), m.location, kind):
        infos = infos[: scan.limits.max_members]
    with zf:
        if kind == "keras":
            from bastion.scan.graphs import scan_keras_config

            scan_keras_config(scan, zf, m.location)
        for info in infos:
            if info.is_dir():
                continue
            if kind in ("torch-zip", "torchscript") and _STORAGE.search(info.filename):
                continue  # raw tensor bytes: torch never unpickles them
            _zip_member(scan, zf, info, m, kind, depth)


def _zip_member(
    scan: Scan, zf: zipfile.ZipFile, info: zipfile.ZipInfo, m: Member, kind: str, depth: int
) -> None:
    loc = f"{m.location}!{info.filename}"
    _check_name(scan, info.filename, loc, kind)
    if info.flag_bits & 0x1:
        scan.add("archive.encrypted", "medium", loc, kind, "encrypted member: not analysed")
        return
    compressed = info.compress_size if info.compress_type != zipfile.ZIP_STORED else None
    declared = scan.inflation_problem(info.file_size, compressed, scan.remaining())
    if declared:
        scan.bomb(loc, kind, f"declared size {info.file_size} bytes: {declared}")
        return
    try:
        with zf.open(info) as fh:
            data = scan.read_capped(fh, location=loc, fmt=kind, compressed=compressed)
    except (
        zipfile.BadZipFile,
        OSError,
        ValueError,
        EOFError,
        zlib.error,
        NotImplementedError,
    ) as exc:
        scan.add("archive.malformed", "medium", loc, kind, f"unreadable member ({exc})")
        return
    if data is None:
        return
    child = Member(location=loc, name=info.filename, data=data)
    if kind in ("torch-zip", "torchscript") and info.filename.endswith((".pkl", ".debug_pkl")):
        if depth + 1 > scan.limits.max_depth:
            deep(scan, child)
            return
        scan.members += 1
        run_pickle(scan, data, loc, kind, depth + 1)
        return
    scan.dispatch(scan, child, depth + 1)


def deep(scan: Scan, m: Member) -> None:
    scan.add(
        "archive.depth",
        "high",
        m.location,
        "archive",
        f"nested deeper than {scan.limits.max_depth} containers: not analysed",
        why="a member that was not analysed may hold code that runs on load",
    )


TORCH_TAR = {"pickle", "storages", "tensors"}


def scan_tar(scan: Scan, m: Member, depth: int) -> None:
    fh = m.open()
    try:
        tf = tarfile.open(fileobj=fh, mode="r:")  # noqa: SIM115 - closed below with fh
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        scan.note("tar")
        scan.add("archive.malformed", "medium", m.location, "tar", f"unreadable tar ({exc})")
        fh.close()
        return
    infos: list[tarfile.TarInfo] = []
    try:
        for info in tf:
            infos.append(info)
            if len(infos) > scan.limits.max_members:
                break
    except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
        scan.add("archive.malformed", "medium", m.location, "tar", f"truncated tar ({exc})")
    names = {i.name for i in infos}
    kind = "torch-tar" if names >= TORCH_TAR else "tar"
    scan.note(kind)
    if _too_many(scan, len(infos), m.location, kind):
        infos = infos[: scan.limits.max_members]
    with tf, fh:
        for info in infos:
            loc = f"{m.location}!{info.name}"
            if info.issym() or info.islnk():
                _check_name(scan, info.linkname, loc, kind)
                continue  # links are never followed
            if not info.isfile():
                continue
            _check_name(scan, info.name, loc, kind)
            if info.size > scan.remaining():
                scan.bomb(loc, kind, f"declares {info.size} bytes, over the byte budget")
                continue
            try:
                stream = tf.extractfile(info)
                data = (
                    scan.read_capped(stream, location=loc, fmt=kind) if stream is not None else b""
                )
            except (tarfile.TarError, OSError, ValueError, EOFError) as exc:
                scan.add("archive.malformed", "medium", loc, kind, f"unreadable member ({exc})")
                continue
            if data is None:
                continue
            child = Member(location=loc, name=info.name, data=data)
            if kind == "torch-tar" and info.name in ("pickle", "sys_info", "storages", "tensors"):
                scan.members += 1
                _torch_tar_member(scan, child, data, depth + 1)
                continue
            scan.dispatch(scan, child, depth + 1)


def _torch_tar_member(scan: Scan, m: Member, data: bytes, depth: int) -> None:
    if depth > scan.limits.max_depth:
        deep(scan, m)
        return
    if m.name in ("pickle", "sys_info"):
        run_pickle(scan, data, m.location, "torch-tar", depth)
        return
    # storages / tensors: a count pickle, then (pickled key, raw bytes) records
    for start, end in pickle_spans(data, 1):
        run_pickle(scan, data[start:end], m.location, "torch-tar", depth)


class _CappedIO:
    """py7zr writer that refuses to grow past a byte cap (raises :class:`Overflow`)."""

    def __init__(self, cap: Callable[[int], str | None]) -> None:
        self.buf = io.BytesIO()
        self.cap = cap

    def write(self, s: bytes | bytearray) -> int:
        n = self.buf.write(s)
        problem = self.cap(self.buf.tell())
        if problem:
            raise Overflow(problem)
        return n

    def read(self, size: int | None = None) -> bytes:
        return self.buf.read(size)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.buf.seek(offset, whence)

    def flush(self) -> None:
        return None

    def size(self) -> int:
        return self.buf.getbuffer().nbytes

    def close(self) -> None:
        return None


def scan_7z(scan: Scan, m: Member, depth: int) -> None:
    import py7zr
    from py7zr.io import WriterFactory

    scan.note("7z")
    outputs: dict[str, _CappedIO] = {}
    packed = max(m.size, 1)

    def cap(_produced: int) -> str | None:
        total = sum(o.size() for o in outputs.values())
        return scan.inflation_problem(total, packed, scan.remaining())

    class Factory(WriterFactory):
        def create(self, filename: str) -> Any:
            outputs[filename] = _CappedIO(cap)
            return outputs[filename]

    try:
        with py7zr.SevenZipFile(m.open(), mode="r") as archive:
            if archive.needs_password():
                scan.add("archive.encrypted", "medium", m.location, "7z", "encrypted: not analysed")
                return
            entries = [e for e in archive.list() if not e.is_directory]
            if _too_many(scan, len(entries), m.location, "7z"):
                return
            declared = sum(e.uncompressed or 0 for e in entries)
            problem = scan.inflation_problem(declared, packed, scan.remaining())
            if problem:
                scan.bomb(m.location, "7z", f"declares {declared} bytes: {problem}")
                return
            archive.extract(factory=Factory())
    except Overflow as exc:
        scan.bomb(m.location, "7z", str(exc))
        return
    except Exception as exc:  # py7zr raises its own, lzma, zlib and struct errors
        scan.add("archive.malformed", "medium", m.location, "7z", f"unreadable 7z ({exc})")
        return
    for name, out in outputs.items():
        data = out.buf.getvalue()
        scan.inflated += len(data)
        loc = f"{m.location}!{name}"
        _check_name(scan, name, loc, "7z")
        scan.dispatch(scan, Member(location=loc, name=name, data=data), depth + 1)


def _decompressor(kind: str) -> Any:
    if kind == "gzip":
        return zlib.decompressobj(31)
    if kind == "zlib":
        return zlib.decompressobj(15)
    if kind == "bz2":
        return bz2.BZ2Decompressor()
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)


_STRIP = {"gzip": (".gz", ".gzip"), "bz2": (".bz2",), "xz": (".xz",), "lzma": (".lzma",)}


def scan_stream(scan: Scan, m: Member, depth: int, kind: str, skip: int = 0) -> bool:
    """A single compressed stream; False when it does not decompress at all (a weak sniff
    such as zlib or lzma-alone that was wrong), so the caller can treat it as unknown."""
    dec = _decompressor(kind)
    out = bytearray()
    consumed = 0
    cap = scan.remaining()
    problem = None
    with m.open() as fh:
        fh.seek(skip)
        try:
            while not dec.eof and problem is None:
                chunk = fh.read(CHUNK)
                if not chunk:
                    break
                consumed += len(chunk)
                data = chunk
                while True:
                    piece = dec.decompress(data, CHUNK)
                    out += piece
                    problem = scan.inflation_problem(len(out), consumed, cap)
                    if problem:
                        break
                    if kind in ("gzip", "zlib"):
                        data = dec.unconsumed_tail
                        if not data:
                            break
                    else:
                        data = b""
                        if dec.eof or dec.needs_input:
                            break
        except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
            if not out:
                return False
            scan.note(kind)
            scan.add("archive.malformed", "medium", m.location, kind, f"corrupt stream ({exc})")
    scan.note(kind)
    scan.inflated += len(out)
    if problem:
        scan.bomb(m.location, kind, problem)
        return True
    if not dec.eof:
        scan.add("archive.truncated", "medium", m.location, kind, "stream ends before its end")
    name = m.name
    for suffix in _STRIP.get(kind, ()):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    else:
        name = f"{name}[{kind}]"
    child = Member(location=f"{m.location}!{posixpath.basename(name)}", name=name, data=bytes(out))
    scan.dispatch(scan, child, depth + 1)
    return True
