"""Reader for the IDX format of MNIST and Fashion-MNIST (LeCun et al. 1998).

Files may be raw or gzip-compressed. Magic number: two zero bytes, a type code
(0x08 = unsigned byte) and the number of dimensions; then big-endian int32 sizes. A file
whose header promises more data than it holds, or a gzip stream that inflates past
:data:`MAX_IDX_BYTES`, is refused before anything is allocated for it.
"""

from __future__ import annotations

import gzip
import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from bastion.errors import DataError

_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
MAX_IDX_BYTES = 4 * 2**30  # 4 GiB inflated: 80 times the Fashion-MNIST training images


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(raw)) as f:
            data = f.read(MAX_IDX_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    if len(data) > MAX_IDX_BYTES:
        raise DataError(f"{path}: inflates to more than {MAX_IDX_BYTES} bytes: not an IDX file")
    return data


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array; raise DataError if malformed."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"IDX file not found: {path}") from None
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        raw = _gunzip(raw, path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _TYPES:
        raise DataError(f"{path}: not an IDX file (wrong magic number {raw[:4].hex() or 'empty'})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise DataError(f"{path}: truncated IDX header")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_TYPES[raw[2]])
    if math.prod(d for d in dims if d) * dtype.itemsize > MAX_IDX_BYTES:
        raise DataError(f"{path}: IDX sizes {list(dims)} describe more than {MAX_IDX_BYTES} bytes")
    expected = math.prod(dims) * dtype.itemsize  # Python ints: no overflow
    body = raw[header:]
    if len(body) < expected:
        raise DataError(
            f"{path}: truncated IDX file: header promises {expected} bytes of data, found {len(body)}"
        )
    if len(body) > expected:
        raise DataError(f"{path}: {len(body) - expected} unexpected trailing bytes after IDX data")
    return np.frombuffer(body, dtype=dtype).reshape(dims)
