"""Property-based fuzzing of model directories, safetensors headers and pickled weights,
hand-edited audit database rows, and HTTP predict bodies (issue 14); the property and the
settings are those of test_fuzz_parsers.py (see tests/reliability/fuzzing.py)."""

from __future__ import annotations

import gzip
import json
import sqlite3
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bastion.errors import BastionError
from tests.reliability.fuzzing import (
    DOCS,
    FUZZ,
    VALUES,
    field_names,
    outcome,
    scratch,
    write,
)

# --------------------------------------------------------------------------- models


def safetensors_blob(tensors: dict[str, torch.Tensor]) -> bytes:
    from safetensors.torch import save

    return save(tensors)


@st.composite
def forged_safetensors(draw: st.DrawFn) -> bytes:
    """A safetensors file whose 8-byte length and JSON header are drawn."""
    entry = st.fixed_dictionaries(
        {
            "dtype": st.sampled_from(["F32", "F64", "I64", "U8", "BOOL", "F16", "XX"]),
            "shape": st.lists(st.integers(-1, 2**40), max_size=3),
            "data_offsets": st.lists(st.integers(-1, 2**40), min_size=0, max_size=3),
        }
    )
    header = draw(st.dictionaries(st.text(max_size=6), st.one_of(entry, VALUES), max_size=3))
    text = json.dumps(header).encode()
    length = draw(st.one_of(st.just(len(text)), st.integers(0, 2**64 - 1)))
    body = draw(st.binary(max_size=64))
    return struct.pack("<Q", length) + text + body


@FUZZ
@given(raw=st.one_of(forged_safetensors(), st.binary(max_size=100)))
def test_safetensors_headers(raw: bytes) -> None:
    from bastion.models.io import _load_state

    out = outcome(_load_state, write(raw, "model.safetensors"))
    if isinstance(out, dict):
        assert all(isinstance(v, torch.Tensor) for v in out.values())


SPEC_PARAMS = st.fixed_dictionaries(
    {},
    optional={
        "input_shape": st.one_of(
            st.lists(st.integers(-1, 9), max_size=4), st.lists(st.integers(1, 10**6), max_size=3)
        ),
        "num_classes": st.one_of(st.integers(-1, 12), st.integers(2, 10**9)),
        "width": st.one_of(st.integers(-1, 8), st.integers(1, 10**9)),
        "hidden": st.one_of(st.integers(-1, 16), st.integers(1, 10**9)),
        "depth": st.integers(-1, 4),
        "junk": VALUES,
    },
)


@st.composite
def model_dirs(draw: st.DrawFn) -> Path:
    from bastion.models.children import CHILD_FORMS

    folder = scratch()
    good = {"input_shape": [4], "num_classes": 2, "hidden": 3, "depth": 1}
    kind = draw(st.sampled_from(["good", "good", "mutated", "params", "text", "json"]))
    names = st.sampled_from(["mlp", "cnn", "nosuch", *sorted(CHILD_FORMS)])
    name = "mlp" if kind in ("good", "mutated") else draw(names)
    params = dict(good) if kind in ("good", "mutated") else draw(SPEC_PARAMS)
    if kind == "mutated":
        params.update(draw(SPEC_PARAMS))
    spec_text = json.dumps({"name": name, "params": params})
    if kind == "text":
        spec_text = draw(st.text(max_size=40))
    elif kind == "json":
        spec_text = json.dumps(draw(VALUES))
    (folder / "spec.json").write_text(spec_text)
    weights = draw(st.sampled_from(["fit", "fit", "random", "forged", "pickle", "none"]))
    if weights == "fit":  # the weights of a small MLP, matching or not the spec
        from torch import nn

        net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        state = {k: v.contiguous() for k, v in net.state_dict().items()}
        (folder / "model.safetensors").write_bytes(safetensors_blob(state))
    elif weights == "random":
        (folder / "model.safetensors").write_bytes(draw(st.binary(max_size=100)))
    elif weights == "forged":
        (folder / "model.safetensors").write_bytes(draw(forged_safetensors()))
    elif weights == "pickle":
        (folder / "model.pt").write_bytes(draw(st.binary(max_size=100)))
    prov = draw(
        st.one_of(
            st.none(), st.just('{"data": "digits"}'), st.text(max_size=20), VALUES.map(json.dumps)
        )
    )
    if prov is not None:
        (folder / "provenance.json").write_text(prov)
    return folder


@FUZZ
@given(folder=model_dirs())
def test_model_directories(folder: Path) -> None:
    from bastion.models.io import LoadedModel, load_model

    out = outcome(load_model, folder)
    assert isinstance(out, (LoadedModel, BastionError))


# --------------------------------------------------------------------------- audit rows

ROW_VALUES = st.one_of(
    st.none(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.binary(max_size=40),
    st.text(max_size=20),
    st.floats(allow_nan=False),
)
AUDIT_COLUMNS = {
    "audit_log_blocks": ["start", "n_entries", "chain", "hashes", "entries"],
    "audit_log_heads": ["tree_size", "timestamp_ms", "root", "signature", "key_id"],
}


@FUZZ
@given(
    n=st.integers(1, 6),
    edits=st.lists(
        st.tuples(
            st.sampled_from(sorted(AUDIT_COLUMNS)),
            st.integers(0, 7),
            ROW_VALUES,
            st.sampled_from(["update", "delete", "insert"]),
        ),
        min_size=1,
        max_size=3,
    ),
    tail=st.integers(1, 10),
)
def test_audit_rows(n: int, edits: list, tail: int) -> None:
    """An audit database edited behind the log's back: verify reports (never crashes),
    and reading entries is a result or a StoreError/ConfigError."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from bastion.audit import AuditLog
    from bastion.audit.verify import VerifyResult

    key = Ed25519PrivateKey.generate()
    url = f"sqlite:///{scratch() / 'audit.db'}"
    with AuditLog.open(url, signing_key=key) as log:
        log.append_many([{"event": "e", "i": i} for i in range(n)])
        log.sign_tree_head()
        path = log.backend.path
    conn = sqlite3.connect(path, isolation_level=None)
    for table, pick, value, action in edits:
        col = AUDIT_COLUMNS[table][pick % len(AUDIT_COLUMNS[table])]
        try:
            if action == "update":
                conn.execute(f"UPDATE {table} SET {col} = ?", (value,))
            elif action == "delete":
                conn.execute(f"DELETE FROM {table} WHERE rowid = (SELECT MIN(rowid) FROM {table})")
            else:
                cols = AUDIT_COLUMNS[table]
                conn.execute(
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [value] * len(cols),
                )
        except sqlite3.Error:
            pass  # a constraint refused the edit: the database stays as it was
    conn.close()
    log = outcome(AuditLog.open, url, create=False)
    if isinstance(log, BastionError):
        return
    with log:
        result = outcome(log.verify, key.public_key())
        assert isinstance(result, (VerifyResult, BastionError))
        if isinstance(result, VerifyResult) and not result.ok:
            assert result.message
        outcome(log.verify, integrity_only=True)
        outcome(log.tail, tail)
        outcome(log.heads)
        outcome(log.entry, 0)
        outcome(log.inclusion_proof, 0)


# --------------------------------------------------------------------------- HTTP bodies

SAMPLE = st.recursive(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False, width=32),
        st.integers(-(2**70), 2**70),
        st.booleans(),
        st.none(),
        st.text(max_size=3),
    ),
    lambda inner: st.lists(inner, max_size=4),
    max_leaves=20,
)
BODIES = st.one_of(
    st.fixed_dictionaries({"inputs": st.lists(SAMPLE, max_size=4)}),
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                hnp.arrays(np.float64, (2, 2), elements=st.floats(-1, 2)).map(lambda a: a.tolist()),
                max_size=3,
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "inputs": st.lists(
                st.dictionaries(st.sampled_from(["a", "b", "c", "d", "e"]), SAMPLE), max_size=3
            )
        }
    ),
    st.fixed_dictionaries(
        {
            "b64": st.one_of(
                st.text(max_size=30),
                st.binary(max_size=64).map(lambda b: __import__("base64").b64encode(b).decode()),
            ),
            "shape": st.lists(
                st.one_of(st.integers(-2, 10**12), st.booleans(), st.text(max_size=2)), max_size=4
            ),
        }
    ),
    DOCS,
)


@FUZZ
@given(
    body=st.one_of(BODIES.map(lambda d: json.dumps(d).encode()), st.binary(max_size=80)),
    tabular=st.booleans(),
    max_batch=st.integers(1, 4),
)
def test_http_bodies(body: bytes, tabular: bool, max_batch: int) -> None:
    """``parse_predict_body`` (called directly, no server): a checked tensor, or InputError
    with a 4xx status and a message."""
    from bastion.data.spec import InputSpec
    from bastion.serve.validation import InputError, RequestSpec, parse_predict_body

    if tabular:
        spec = InputSpec(
            modality="tabular",
            shape=[4],
            source_layout="flat",
            lower=[0.0, -1.0, 0.0, 0.0],
            upper=[1.0, 1.0, 5.0, 1.0],
            integer=[2],
            feature_names=["a", "b", "c", "d"],
        )
    else:
        spec = InputSpec(modality="image", shape=[1, 2, 2], lower=[0.0], upper=[1.0])
    req = RequestSpec.from_spec(spec, max_batch=max_batch, tolerance=1e-4)
    try:
        x = parse_predict_body(body, req)
    except InputError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == req.sample_shape
    assert 1 <= x.shape[0] <= max_batch and torch.isfinite(x).all()


@pytest.mark.parametrize(
    "body",
    [b'{"inputs": [[[[1e39, 0], [0, 0]]]]}', b'{"inputs": [[[[' + b"9" * 400 + b", 0], [0, 0]]]]}"],
)
def test_http_body_overflowing_numbers(body: bytes) -> None:
    from bastion.data.spec import InputSpec
    from bastion.serve.validation import InputError, RequestSpec, parse_predict_body

    spec = InputSpec(modality="image", shape=[1, 2, 2], lower=[0.0], upper=[1.0])
    req = RequestSpec.from_spec(spec, max_batch=4, tolerance=1e-4)
    with pytest.raises(InputError) as exc:
        parse_predict_body(body, req)
    assert exc.value.status == 422


def test_guard_config_fields_are_covered() -> None:
    """The key strategy reaches the nested fields of every YAML schema (not only the top)."""
    names = field_names()
    for key in ("n_eval", "target_fpr", "shrinkage", "if_missing", "beta", "label_column"):
        assert key in names


# --------------------------------------------------------------------------- regressions
# Inputs the fuzzing found, kept as plain tests so they stay covered whatever is drawn.

REGRESSIONS = [
    # an IDX header with a zero size beside sizes whose product overflows numpy
    ("idx", bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 0, 2**32 - 1, 2**32 - 1)),
    # an IDX header whose sizes multiply past int64 (np.prod wrapped around)
    ("idx", bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2**32 - 1, 2**32 - 1, 2**32 - 1)),
    # a truncated gzip stream (zlib.error, not OSError)
    ("idx", gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x02ab")[:-12] + b"\xff" * 12),
    # a pickle cut inside a float opcode (struct.error from torch's restricted unpickler)
    ("pt", b"\x80\x02G\x00"),
    # a pickle that calls os.system (refused; the message never says weights_only)
    ("pt", b"\x80\x02cposix\nsystem\nq\x00X\x04\x00\x00\x00trueq\x01\x85q\x02Rq\x03."),
]


@pytest.mark.parametrize(("kind", "raw"), REGRESSIONS)
def test_found_inputs(kind: str, raw: bytes) -> None:
    from bastion.data.idx import read_idx
    from bastion.models.io import _load_state

    if kind == "idx":
        out = outcome(read_idx, write(raw, "train-images-idx3-ubyte"))
    else:
        out = outcome(_load_state, write(raw, "model.pt"))
    assert isinstance(out, BastionError)
    assert "weights_only" not in str(out)
