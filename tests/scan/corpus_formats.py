"""Container formats of the scan corpus, written by hand from their specifications.

- NumPy ``.npy`` v1.0 (NEP 1: magic, header dict, then for ``|O`` arrays a pickle);
- GGUF v3 (ggml ``docs/gguf.md``: magic, version, tensor and KV counts, typed KV pairs);
- Keras 3 ``.keras`` (a zip of ``config.json``, ``metadata.json``, ``model.weights.h5``) and
  Keras 2 HDF5 (``model_config`` attribute), Lambda layers serialised as base64 marshal;
- legacy torch tar (members ``sys_info``/``storages``/``tensors``/``pickle``, read by
  ``torch.serialization._legacy_load``).
"""

from __future__ import annotations

import base64
import io
import json
import marshal
import pickletools
import struct
import tarfile
import zipfile
from pathlib import Path


def rename_zip_folder(data: bytes, folder: str) -> bytes:
    """A torch zip with its top folder (``archive/``, or the file stem) renamed."""
    src = zipfile.ZipFile(io.BytesIO(data))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for info in src.infolist():
            rest = info.filename.split("/", 1)[1]
            dst.writestr(f"{folder}/{rest}", src.read(info))
    return out.getvalue()


def first_pickle_end(data: bytes) -> int:
    """Offset just past the first pickle's STOP (read with pickletools: never unpickled)."""
    for op, _, pos in pickletools.genops(io.BytesIO(data)):
        if op.name == "STOP":
            return pos + 1
    raise ValueError("no STOP opcode")


def replace_first_pickle(data: bytes, payload: bytes) -> bytes:
    return payload + data[first_pickle_end(data) :]


def torch_tar(payload: bytes) -> bytes:
    """A legacy torch tar whose ``storages`` member (unpickled first) is ``payload``."""
    buf = io.BytesIO()
    empty = b"\x80\x02]q\x00."  # an empty list
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in (
            ("sys_info", b"\x80\x02}q\x00."),
            ("storages", payload),
            ("tensors", empty),
            ("pickle", empty),
        ):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def object_npy(pickle_bytes: bytes) -> bytes:
    """An ``.npy`` file of dtype ``|O`` whose body is ``pickle_bytes``."""
    header = "{'descr': '|O', 'fortran_order': False, 'shape': (1,), }"
    pad = 64 - (10 + len(header) + 1) % 64
    header = header + " " * pad + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode() + pickle_bytes


def seven_zip(data: bytes, name: str = "model.pkl") -> bytes:
    import py7zr

    buf = io.BytesIO()
    with py7zr.SevenZipFile(buf, "w") as z:
        z.writestr(data, name)
    return buf.getvalue()


def _gguf_str(s: str) -> bytes:
    raw = s.encode()
    return struct.pack("<Q", len(raw)) + raw


def gguf(template: str, *, name: str = "tiny-chat") -> bytes:
    """A GGUF v3 file with no tensors and string metadata, the chat template included."""
    kv = {
        "general.architecture": "llama",
        "general.name": name,
        "tokenizer.chat_template": template,
    }
    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv))
    for key, value in kv.items():
        out += _gguf_str(key) + struct.pack("<I", 8) + _gguf_str(value)  # 8 = STRING
    return out


# The naive loader of a GGUF chat template: read the metadata and render the template with a
# plain (unsandboxed) jinja2 Environment, as llama-cpp-python did before CVE-2024-34359.
GGUF_RENDER = """
import struct, sys, jinja2
f = open(sys.argv[1], 'rb'); assert f.read(4) == b'GGUF'
_, nt, nkv = struct.unpack('<IQQ', f.read(20))
def s():
    (n,) = struct.unpack('<Q', f.read(8)); return f.read(n).decode()
meta = {}
for _ in range(nkv):
    k = s(); (t,) = struct.unpack('<I', f.read(4)); meta[k] = s()
jinja2.Environment().from_string(meta['tokenizer.chat_template']).render(
    messages=[{'role': 'user', 'content': 'hi'}], add_generation_prompt=True,
    bos_token='<s>', eos_token='</s>')
"""


def _lambda_code(marker: str) -> str:
    fn = eval(f"lambda x: (open({marker!r}, 'w').close(), x)[1]")
    return base64.b64encode(marshal.dumps(fn.__code__)).decode("ascii")


def _empty_h5() -> bytes:
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as h5:
        h5.create_group("layers")
    return buf.getvalue()


def keras_lambda(marker: str) -> bytes:
    """A Keras 3 ``.keras`` zip whose Lambda layer's function writes ``marker``."""
    lam = {
        "module": "keras.layers",
        "class_name": "Lambda",
        "config": {
            "name": "lambda",
            "trainable": True,
            "dtype": "float32",
            "function": {
                "class_name": "__lambda__",
                "config": {"code": _lambda_code(marker), "defaults": None, "closure": None},
            },
            "arguments": {},
        },
        "registered_name": None,
        "build_config": {"input_shape": [None, 4]},
    }
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {
                    "module": "keras.layers",
                    "class_name": "InputLayer",
                    "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "input"},
                },
                lam,
            ],
        },
        "registered_name": None,
    }
    meta = {"keras_version": "3.5.0", "date_saved": "2025-01-01@00:00:00"}
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("metadata.json", json.dumps(meta))
        z.writestr("config.json", json.dumps(config))
        z.writestr("model.weights.h5", _empty_h5())
    return buf.getvalue()


def keras_h5_lambda(path: Path, marker: str) -> None:
    """A Keras 2 HDF5 model whose ``model_config`` holds a Lambda layer writing ``marker``."""
    import h5py

    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "config": {"batch_input_shape": [None, 4], "dtype": "float32", "name": "in"},
                },
                {
                    "class_name": "Lambda",
                    "config": {
                        "name": "lambda",
                        "trainable": True,
                        "dtype": "float32",
                        "function": [_lambda_code(marker), None, None],
                        "function_type": "lambda",
                        "module": "__main__",
                        "output_shape": None,
                        "output_shape_type": "raw",
                        "output_shape_module": None,
                        "arguments": {},
                    },
                },
            ],
        },
    }
    with h5py.File(path, "w") as h5:
        h5.attrs["model_config"] = json.dumps(config)
        h5.attrs["keras_version"] = "2.15.0"
        h5.attrs["backend"] = "tensorflow"
        h5.create_group("model_weights")
