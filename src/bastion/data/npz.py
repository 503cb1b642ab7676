"""A safe reader of ``.npz`` archives (NumPy's zip of ``.npy`` arrays).

Every member's header is read first: an object array (which would need unpickling) is
refused, and so is a header that promises more data than the member holds, before any
memory is allocated for it (a 100-byte archive can otherwise claim a terabyte array). Every
problem is a :class:`~bastion.errors.DataError` naming the file and the member.
"""

from __future__ import annotations

import math
import zipfile
import zlib
from pathlib import Path
from typing import IO

import numpy as np

from bastion.errors import DataError

MAX_MEMBERS = 64  # arrays in one archive (a dataset needs at most x/y_train/test, class_names)


def _header(fp: IO[bytes]) -> tuple[tuple[int, ...], np.dtype]:
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version in ((2, 0), (3, 0)):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        raise ValueError(f"unsupported .npy format version {version}")
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    name = info.filename
    with zf.open(info) as fp:
        shape, dtype = _header(fp)
        if dtype.hasobject:
            raise DataError(
                f"{path}: member {name} holds Python objects (loading it would unpickle "
                "them): refused; save numeric arrays only"
            )
        need = math.prod(shape) * dtype.itemsize
        if need > info.file_size:
            raise DataError(
                f"{path}: member {name} is truncated or forged: its header promises "
                f"{need} bytes of data, the archive holds {info.file_size}"
            )
    with zf.open(info) as fp:
        return np.lib.format.read_array(fp, allow_pickle=False)


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a ``.npz`` file by name (``x``, ``y``, …); DataError when the file is
    missing, not a zip of ``.npy`` arrays, truncated, or holds pickled objects."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"dataset file not found: {path}")
    arrays: dict[str, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            if len(members) > MAX_MEMBERS:
                raise DataError(f"{path}: {len(members)} arrays; a dataset file holds a few")
            for info in members:
                key = info.filename.removesuffix(".npy")
                arrays[key] = _member(zf, info, path)
    except DataError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({exc})") from None
    except (OSError, EOFError, ValueError, zlib.error, UnicodeDecodeError) as exc:
        # a corrupt member: bad .npy header, CRC mismatch, data cut short
        reason = " ".join(str(exc).split())[:200]
        raise DataError(f"{path}: corrupt .npz member ({type(exc).__name__}: {reason})") from None
    return arrays
