"""The `bastion scan` corpus: code-executing model files and the benign files users have.

:func:`build_corpus` writes every item under ``out`` and, with ``verify=True``, proves that
each malicious item fires: it is loaded by its naive loader in a fresh interpreter (cwd
``out``, 20 s timeout) and the ``marker`` file must appear (it is deleted afterwards). Payloads
only ever create ``marker``. Keras Lambda files cannot be fired here (no TensorFlow/Keras):
they are malicious by construction (``verified="by-construction"``).

Formats follow issue 12: raw pickle (protocols 0–5), torch zip under any folder name, legacy
torch (non-zip and tar), joblib (plain and compressed), numpy object arrays, archives (zip,
zip-in-zip, tar.gz, gzip, bz2, xz, 7z), GGUF chat templates, Keras ``.keras``/``.h5``.
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import os
import shlex
import subprocess
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.scan import corpus_benign, corpus_formats
from tests.scan.corpus_payloads import ext_code_pickle, gguf_templates, pickle_payloads

KINDS = ("malicious", "suspicious", "tensors", "sklearn", "full-module", "other")


@dataclass(frozen=True)
class CorpusItem:
    """One corpus file. ``kind``: ``malicious``; ``suspicious`` (cannot fire, should be
    flagged); benign ``tensors`` (plain tensors, state dicts, safetensors, numeric numpy),
    ``sklearn`` (scikit-learn pickles/joblib), ``full-module`` (pickled nn.Module: references
    torch.nn classes), ``other`` (ONNX, XGBoost, LightGBM, skops, TorchScript, GGUF)."""

    path: Path
    technique: str
    format: str
    malicious: bool
    loader: str
    kind: str = "malicious"
    verified: str = ""  # "fired" or "by-construction" for malicious items


class _Fire:
    """An object whose pickle calls ``func(*args)``: used where a real library writes the
    pickle (torch.save, joblib.dump, numpy.save)."""

    def __init__(self, func: Any, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


LOADERS: dict[str, str] = {
    "pickle.load": "import pickle,sys; pickle.load(open(sys.argv[1],'rb'))",
    "torch.load(weights_only=False)": (
        "import torch,sys; torch.load(sys.argv[1], weights_only=False)"
    ),
    "joblib.load": "import joblib,sys; joblib.load(sys.argv[1])",
    "numpy.load(allow_pickle=True)": (
        "import numpy,sys; d=numpy.load(sys.argv[1], allow_pickle=True)\n"
        "if hasattr(d, 'files'): [d[k] for k in d.files]"
    ),
    "zipfile+pickle.load": (
        "import zipfile,pickle,sys; z=zipfile.ZipFile(sys.argv[1]); "
        "pickle.loads(z.read(z.namelist()[0]))"
    ),
    "zip-in-zip+pickle.load": (
        "import zipfile,pickle,sys,io; z=zipfile.ZipFile(sys.argv[1]); "
        "i=zipfile.ZipFile(io.BytesIO(z.read(z.namelist()[0]))); pickle.loads(i.read(i.namelist()[0]))"
    ),
    "tarfile+pickle.load": (
        "import tarfile,pickle,sys; t=tarfile.open(sys.argv[1]); "
        "pickle.load(t.extractfile(t.getmembers()[0]))"
    ),
    "gzip+pickle.load": "import gzip,pickle,sys; pickle.load(gzip.open(sys.argv[1]))",
    "bz2+pickle.load": "import bz2,pickle,sys; pickle.load(bz2.open(sys.argv[1]))",
    "lzma+pickle.load": "import lzma,pickle,sys; pickle.load(lzma.open(sys.argv[1]))",
    "py7zr+pickle.load": (
        "import py7zr,pickle,sys,tempfile,pathlib\n"
        "with tempfile.TemporaryDirectory(dir='.') as d:\n"
        "    py7zr.SevenZipFile(sys.argv[1]).extractall(d)\n"
        "    [pickle.load(open(p,'rb')) for p in pathlib.Path(d).rglob('*') if p.is_file()]"
    ),
    "jinja2 render": corpus_formats.GGUF_RENDER,
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _pickles(out: Path, marker: str) -> list[CorpusItem]:
    items = []
    for p in pickle_payloads(marker):
        name = p.technique.replace("/", "_")
        path = _write(out / f"{name}.p{p.proto}.pkl", p.data)
        items.append(
            CorpusItem(path, f"pickle-p{p.proto}:{p.technique}", "pickle", True, "pickle.load")
        )
    return items


def _containers(out: Path, marker: str) -> list[CorpusItem]:
    """One payload wrapped by each library format and each archive."""
    import joblib
    import numpy as np
    import torch

    sh = f"touch {shlex.quote(marker)}"
    fire = _Fire(os.system, (sh,))
    raw = pickle_payloads(marker)[0].data  # os.system, protocol 0
    items: list[CorpusItem] = []

    def add(name: str, technique: str, fmt: str, loader: str, data: bytes) -> None:
        items.append(CorpusItem(_write(out / name, data), technique, fmt, True, loader))

    t = "torch.load(weights_only=False)"
    buf = io.BytesIO()
    torch.save({"w": torch.zeros(2), "hook": fire}, buf)
    add("torch-zip-payload.pt", "torch-zip:state-dict-plus-payload", "torch-zip", t, buf.getvalue())
    add(
        "torch-zip-renamed.pt",
        "torch-zip:renamed-folder",
        "torch-zip",
        t,
        corpus_formats.rename_zip_folder(buf.getvalue(), "weights_v2_final"),
    )
    legacy = io.BytesIO()
    torch.save({"hook": fire}, legacy, _use_new_zipfile_serialization=False)
    add("torch-legacy.pt", "torch-legacy:main-pickle", "torch-legacy", t, legacy.getvalue())
    add(
        "torch-legacy-magic.pt",
        "torch-legacy:payload-in-magic-number-pickle",
        "torch-legacy",
        t,
        corpus_formats.replace_first_pickle(legacy.getvalue(), raw),
    )
    add("torch-tar.pt", "torch-tar:storages-member", "torch-tar", t, corpus_formats.torch_tar(raw))

    for comp, suffix in ((None, "joblib"), (3, "zlib.joblib"), (("lzma", 3), "xz.joblib")):
        path = out / f"payload.{suffix}"
        joblib.dump(fire, path, compress=comp or 0)
        label = "plain" if comp is None else ("zlib" if comp == 3 else "lzma")
        items.append(CorpusItem(path, f"joblib:{label}", "joblib", True, "joblib.load"))
    from sklearn.linear_model import LogisticRegression

    path = out / "sklearn-with-payload.joblib"
    lr = LogisticRegression().fit(np.array([[0.0], [1.0], [2.0], [3.0]]), np.array([0, 0, 1, 1]))
    joblib.dump({"model": lr, "hook": fire}, path)
    items.append(
        CorpusItem(path, "joblib:sklearn-model-plus-payload", "joblib", True, "joblib.load")
    )

    n = "numpy.load(allow_pickle=True)"
    npy = corpus_formats.object_npy(raw)
    add("object.npy", "numpy:object-npy", "npy", n, npy)
    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as z:
        z.writestr("weights.npy", corpus_formats.object_npy(b"\x80\x02" + raw))
    add("object.npz", "numpy:object-npz", "npz", n, zbuf.getvalue())

    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("model.pkl", raw)
    add("wrapped.zip", "archive:zip", "zip", "zipfile+pickle.load", inner.getvalue())
    outer = io.BytesIO()
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("model.zip", inner.getvalue())
    add("zip-in-zip.zip", "archive:zip-in-zip", "zip", "zip-in-zip+pickle.load", outer.getvalue())
    tbuf = io.BytesIO()
    with tarfile.open(fileobj=tbuf, mode="w:gz") as tar:
        info = tarfile.TarInfo("model/model.pkl")
        info.size = len(raw)
        tar.addfile(info, io.BytesIO(raw))
    add("wrapped.tar.gz", "archive:tar.gz", "tar", "tarfile+pickle.load", tbuf.getvalue())
    add("model.pkl.gz", "archive:gzip", "gzip", "gzip+pickle.load", gzip.compress(raw))
    add("model.pkl.bz2", "archive:bz2", "bz2", "bz2+pickle.load", bz2.compress(raw))
    add("model.pkl.xz", "archive:xz", "xz", "lzma+pickle.load", lzma.compress(raw))
    add("wrapped.7z", "archive:7z", "7z", "py7zr+pickle.load", corpus_formats.seven_zip(raw))

    for technique, template in gguf_templates(marker):
        data = corpus_formats.gguf(template)
        add(f"{technique}.gguf", technique, "gguf", "jinja2 render", data)

    items.append(
        CorpusItem(
            _write(out / "lambda.keras", corpus_formats.keras_lambda(marker)),
            "keras:.keras-lambda-layer",
            "keras",
            True,
            "keras",
            verified="by-construction",
        )
    )
    h5 = out / "lambda.h5"
    corpus_formats.keras_h5_lambda(h5, marker)
    items.append(
        CorpusItem(
            h5, "keras:.h5-lambda-layer", "keras-h5", True, "keras", verified="by-construction"
        )
    )
    return items


def fires(item: CorpusItem, marker: Path, *, timeout: float = 20.0) -> bool:
    """Load ``item`` with its naive loader in a fresh interpreter; True when ``marker``
    appears (it is then deleted)."""
    marker.unlink(missing_ok=True)
    env = {**os.environ, "TMPDIR": str(item.path.parent)}
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(
            [sys.executable, "-c", LOADERS[item.loader], str(item.path)],
            cwd=item.path.parent,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            env=env,
        )
    deadline = time.monotonic() + 2.0  # a payload's child process may finish after the loader
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    hit = marker.exists()
    marker.unlink(missing_ok=True)
    return hit


def build_corpus(
    out: Path, marker: Path, *, verify: bool = True, benign: bool = True
) -> list[CorpusItem]:
    """Write the corpus under ``out``; with ``verify``, fire every malicious item (a
    RuntimeError names any that does not fire) and mark it ``verified="fired"``; without
    ``benign``, only the malicious and suspicious items."""
    out = Path(out)
    (out / "malicious").mkdir(parents=True, exist_ok=True)
    m = str(Path(marker).resolve())
    items = _pickles(out / "malicious", m) + _containers(out / "malicious", m)
    items.append(
        CorpusItem(
            _write(out / "malicious" / "ext-code.pkl", ext_code_pickle()),
            "pickle-p2:ext1-unregistered-code",
            "pickle",
            False,
            "pickle.load",
            kind="suspicious",
        )
    )
    if benign:
        items += [
            CorpusItem(b.path, b.technique, b.format, False, b.loader, kind=b.kind)
            for b in corpus_benign.build_benign(out / "benign")
        ]
    if not verify:
        return items
    checked, silent = [], []
    for item in items:
        if item.malicious and not item.verified:
            if not fires(item, Path(m)):
                silent.append(item.technique)
            item = CorpusItem(**{**item.__dict__, "verified": "fired"})
        checked.append(item)
    if silent:
        raise RuntimeError(f"corpus items that did not fire: {', '.join(silent)}")
    return checked
