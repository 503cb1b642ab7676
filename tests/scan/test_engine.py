"""The `bastion scan` engine: format sniffing, containers, limits, require_clean and the
loading paths it guards. Hostile files are only written (pickling a payload is inert), never
loaded: every assertion is on the static scan."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
import pickle
import tarfile
import time
import zipfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.errors import UnsafeModelError
from bastion.scan.engine import ScanLimits, require_clean, scan_file, scan_paths, sniff
from bastion.scan.findings import Severity


class Payload:
    """Pickles to ``os.system('echo pwned')``: written to disk, never unpickled."""

    def __reduce__(self):
        return (os.system, ("echo pwned",))


EVIL = pickle.dumps(Payload(), protocol=2)


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def tar_bytes(members: dict[str, bytes], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def critical_system(result) -> list:
    return [
        f
        for f in result.findings
        if f.severity is Severity.critical and f.symbol and f.symbol.endswith("system")
    ]


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


# --- containers ----------------------------------------------------------------------------


def test_torch_zip_under_a_renamed_folder_is_scanned(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(2)}, path)
    with zipfile.ZipFile(path) as zf:
        members = {i.filename.replace("model/", "innocent/", 1): zf.read(i) for i in zf.infolist()}
    members["innocent/extra/other.pkl"] = EVIL  # every .pkl member, not only data.pkl
    hostile = write(tmp_path, "hostile.pt", zip_bytes(members, zipfile.ZIP_STORED))
    result = scan_file(hostile)
    assert "torch-zip" in result.formats
    (hit,) = critical_system(result)
    assert hit.location == f"{hostile}!innocent/extra/other.pkl"
    assert hit.offset is not None and hit.offset >= 0
    assert scan_file(path).findings == []


def test_zip_in_zip_tar_gz_and_7z_reach_the_pickle(tmp_path):
    import py7zr

    inner = zip_bytes({"weights/model.pkl": EVIL})
    paths = [
        write(tmp_path, "outer.zip", zip_bytes({"inner.zip": inner})),
        write(tmp_path, "bundle.tar.gz", tar_bytes({"a/model.pkl": EVIL}, "w:gz")),
        write(tmp_path, "m.pkl.bz2", bz2.compress(EVIL)),
        write(tmp_path, "m.pkl.xz", lzma.compress(EVIL)),
        write(tmp_path, "m.pkl.gz", gzip.compress(EVIL)),
    ]
    with py7zr.SevenZipFile(tmp_path / "m.7z", "w") as archive:
        archive.writestr(EVIL, "nested/model.pkl")
    paths.append(tmp_path / "m.7z")
    for path in paths:
        result = scan_file(path)
        assert critical_system(result), (path.name, result)
        assert "!" in critical_system(result)[0].location
    assert "7z" in scan_file(tmp_path / "m.7z").formats
    assert {"gzip", "tar"} <= set(scan_file(paths[1]).formats)


def test_joblib_compressed_with_each_wrapper(tmp_path):
    joblib = pytest.importorskip("joblib")
    for method in ("zlib", "gzip", "bz2", "lzma", "xz"):
        path = tmp_path / f"m.{method}.joblib"
        joblib.dump(Payload(), path, compress=(method, 3))
        assert critical_system(scan_file(path)), method


def test_legacy_torch_tar_and_non_zip_formats(tmp_path):
    legacy = {
        "sys_info": pickle.dumps({"protocol_version": 1000}),
        "pickle": EVIL,
        "storages": pickle.dumps(0),
        "tensors": pickle.dumps(0),
    }
    result = scan_file(write(tmp_path, "old.tar", tar_bytes(legacy)))
    assert "torch-tar" in result.formats and critical_system(result)

    benign = tmp_path / "legacy.pt"
    torch.save({"w": torch.ones(3)}, benign, _use_new_zipfile_serialization=False)
    assert "torch-legacy" in scan_file(benign).formats
    assert scan_file(benign).findings == []
    # the object pickle replaced by the payload, after magic, protocol and sys_info
    raw = benign.read_bytes()
    from bastion.scan.containers import pickle_spans

    spans = pickle_spans(raw, 5)
    assert len(spans) == 5
    start, end = spans[3]
    hostile = write(tmp_path, "legacy-evil.pt", raw[:start] + EVIL + raw[end:])
    (hit,) = critical_system(scan_file(hostile))
    assert hit.offset is not None and hit.offset > start


# --- limits --------------------------------------------------------------------------------


SMALL = ScanLimits(bomb_floor=1 << 20, max_ratio=50, max_member_bytes=1 << 30)


def test_zip_bomb_ends_in_a_finding_fast(tmp_path):
    zeros = b"\0" * (64 << 20)
    path = write(tmp_path, "bomb.zip", zip_bytes({"a.bin": zeros, "b.pkl": zeros}))
    assert path.stat().st_size < (1 << 20)
    start = time.perf_counter()
    result = scan_file(path, limits=SMALL)
    assert time.perf_counter() - start < 10
    assert {f.rule for f in result.findings} == {"archive.bomb"}
    assert all(f.severity.rank >= Severity.high.rank for f in result.findings)


def test_stream_bomb_is_cut_while_inflating(tmp_path):
    path = write(tmp_path, "bomb.gz", gzip.compress(b"\0" * (64 << 20)))
    start = time.perf_counter()
    result = scan_file(path, limits=SMALL)
    assert time.perf_counter() - start < 10
    assert [f.rule for f in result.findings] == ["archive.bomb"]
    # the same bytes under a byte cap smaller than the payload, no ratio involved
    capped = ScanLimits(max_member_bytes=4 << 20, max_ratio=1e9)
    assert [f.rule for f in scan_file(path, limits=capped).findings] == ["archive.bomb"]


def test_deep_nesting_and_member_count_are_bounded(tmp_path):
    blob = zip_bytes({"x.pkl": EVIL})
    for i in range(6):
        blob = zip_bytes({f"level{i}.zip": blob})
    result = scan_file(write(tmp_path, "deep.zip", blob))
    assert "archive.depth" in {f.rule for f in result.findings}
    many = zip_bytes({f"f{i}.txt": b"x" for i in range(12)})
    result = scan_file(write(tmp_path, "many.zip", many), limits=ScanLimits(max_members=5))
    assert [f.rule for f in result.findings] == ["archive.members"]


def test_truncated_files_give_findings_not_errors(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(4)}, path)
    raw = path.read_bytes()
    for cut in (10, len(raw) // 2, len(raw) - 30):
        result = scan_file(write(tmp_path, f"cut{cut}.pt", raw[:cut]))
        assert result.error is None
    cut = scan_file(write(tmp_path, "cut.gz", gzip.compress(EVIL * 50)[:-40]))
    assert "archive.truncated" in {f.rule for f in cut.findings}
    assert critical_system(cut)  # what could be inflated was still analysed


# --- sniffing, walking, require_clean ------------------------------------------------------


def test_sniff_by_content_not_suffix(tmp_path):
    assert sniff(EVIL, "weights.bin") == "pickle"
    assert sniff(pickle.dumps([1, 2], protocol=0), "x.txt") == "pickle"
    assert sniff(b"config: 1\nother: 2\n", "x.yaml") == "unknown"
    assert sniff(b"config: 1\nother: 2\n", "x.pkl") == "pickle"  # the name says pickle.load
    lightgbm = b"tree\nversion=v4\nnum_class=1\nlearning_rate=0.1\nfeature_names=a b.c\n"
    assert sniff(lightgbm, "model.txt") == "unknown"
    assert sniff(b'{"learner": {}}', "model.json") == "unknown"
    assert sniff(b"tree\nversion=v4\n", "model.txt") == "unknown"
    result = scan_file(write(tmp_path, "README.md", EVIL))
    assert critical_system(result)


def test_scan_paths_walks_folders_without_following_links_out(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    write(outside, "evil.pkl", EVIL)
    root = tmp_path / "models"
    (root / "sub").mkdir(parents=True)
    write(root / "sub", "evil.pkl", EVIL)
    write(root, "notes.txt", b"hello")
    (root / "link.pkl").symlink_to(outside / "evil.pkl")
    (root / "linkdir").symlink_to(outside, target_is_directory=True)
    report = scan_paths([root])
    assert [Path(r.path).name for r in report.files] == ["notes.txt", "evil.pkl"]
    assert len(report.at_least(Severity.critical)) == 1
    assert report.files[0].formats == ["unknown"]


def test_require_clean_names_the_first_finding(tmp_path):
    path = write(tmp_path, "evil.pkl", EVIL)
    with pytest.raises(UnsafeModelError, match=r"evil\.pkl: refused by bastion scan: ") as exc:
        require_clean(path)
    message = str(exc.value)
    assert "\n" not in message and "system" in message and "@" in message
    clean = tmp_path / "sd.pt"
    torch.save({"w": torch.zeros(2)}, clean)
    require_clean(clean)  # no exception


def test_loading_paths_refuse_before_unpickling(tmp_path):
    from bastion.models.io import load_model
    from bastion.models.resume import load_checkpoint

    marker = tmp_path / "marker"

    class Marker:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    ckpt = tmp_path / "ckpt.pt"
    with zipfile.ZipFile(ckpt, "w") as zf:
        zf.writestr("ckpt/data.pkl", pickle.dumps(Marker(), protocol=2))
        zf.writestr("ckpt/version", "3\n")
    with pytest.raises(UnsafeModelError, match="refused by bastion scan"):
        load_model(ckpt)
    with pytest.raises(UnsafeModelError, match="refused by bastion scan"):
        load_checkpoint(ckpt)
    assert not marker.exists()


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prefix=st.sampled_from(
        [
            b"",
            b"PK\x03\x04",
            b"\x80\x04",
            b"\x93NUMPY\x01\x00",
            b"GGUF\x03\x00\x00\x00",
            b"\x1f\x8b",
            b"BZh",
            b"\xfd7zXZ\x00",
            b"7z\xbc\xaf\x27\x1c",
            b"\x89HDF\r\n\x1a\n",
            b"\x10\x00\x00\x00\x00\x00\x00\x00{",
            b"x\x9c",
            b"\x08\x07",
        ]
    ),
    body=st.binary(max_size=512),
)
def test_random_bytes_never_raise(tmp_path, prefix, body):
    path = tmp_path / "random.bin"
    path.write_bytes(prefix + body)
    result = scan_file(path)
    assert result.path == str(path) and result.formats
