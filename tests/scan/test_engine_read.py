"""How the engine reads a file: once, whole when small (bastion.scan.source.Member.from_file),
else its head is kept and the rest read by the analyser. Findings must not depend on which."""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import pytest

from bastion.scan.engine import SNIFF_WINDOW, scan_file
from bastion.scan.findings import Severity
from bastion.scan.source import Member


class _System:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _padded_evil(size: int) -> bytes:
    """A protocol-2 pickle of exactly ``size`` bytes whose last object calls os.system."""
    base = pickle.dumps(["", _System()], protocol=2)
    pad = size - len(base)
    data = pickle.dumps(["x" * pad, _System()], protocol=2)
    data = pickle.dumps(["x" * (pad - (len(data) - size)), _System()], protocol=2)
    assert len(data) == size
    return data


@pytest.mark.parametrize("size", [200, SNIFF_WINDOW - 1, SNIFF_WINDOW, SNIFF_WINDOW + 1, 300_000])
def test_pickle_findings_do_not_depend_on_the_file_size(tmp_path, size):
    path = tmp_path / "m.pkl"
    data = _padded_evil(size)
    path.write_bytes(data)
    result = scan_file(path)
    assert result.error is None and result.bytes == size and result.formats == ["pickle"]
    (hit,) = [f for f in result.findings if f.severity is Severity.critical]
    assert hit.symbol == "posix.system" and hit.location == str(path)
    assert hit.offset == data.rindex(b"cposix\nsystem\n")  # the GLOBAL near the end


def test_a_zip_larger_than_the_sniff_window_is_read_whole(tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("pad.bin", os.urandom(SNIFF_WINDOW * 2))
        zf.writestr("model/data.pkl", pickle.dumps(_System(), protocol=2))
    path = tmp_path / "big.pt"
    path.write_bytes(buf.getvalue())
    result = scan_file(path)
    assert any(
        f.symbol == "posix.system" and f.location == f"{path}!model/data.pkl"
        for f in result.findings
    )


def test_from_file_keeps_small_files_whole_and_large_ones_on_disk(tmp_path):
    small, large = tmp_path / "s", tmp_path / "l"
    small.write_bytes(b"a" * 10)
    large.write_bytes(b"b" * 100)
    m = Member.from_file(small, 10, 10)
    assert m.data == b"a" * 10 and m.size == 10 and m.head(4) == b"aaaa"
    m = Member.from_file(large, 100, 10)
    assert m.data is None and m.size == 100 and m.head(11) == b"b" * 11
    assert m.head(50) == b"b" * 50  # past the kept head: read from the file
    with m.open() as fh:
        assert fh.read() == b"b" * 100


def test_a_folder_given_as_a_file_is_a_read_error(tmp_path):
    result = scan_file(tmp_path)
    assert result.error is not None and result.error.startswith("cannot read")
    assert result.findings == []
