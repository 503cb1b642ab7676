"""Format analysers of `bastion scan`: benign files users really have give no findings (or
the documented ones), hostile ones give the rule that names the problem. Hostile files are
only written, never loaded."""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bastion.scan.engine import scan_file
from bastion.scan.findings import Severity
from bastion.scan.tensors import parse_literal


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def rules(result) -> set[str]:
    return {f.rule for f in result.findings}


# --- torch and numpy -----------------------------------------------------------------------


def test_state_dict_is_clean_full_module_is_not(tmp_path):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save(model.state_dict(), tmp_path / "sd.pt")
    torch.save(model, tmp_path / "full.pt")
    clean = scan_file(tmp_path / "sd.pt")
    assert clean.findings == [] and clean.formats == ["torch-zip"]
    full = scan_file(tmp_path / "full.pt")
    symbols = {f.symbol for f in full.findings}
    # loading a full module runs torch.nn code paths: outside the core allowlist
    assert any(s and s.startswith("torch.nn.modules") for s in symbols)
    assert full.worst is not None and full.worst.rank >= Severity.high.rank


def test_torchscript_archive_is_clean(tmp_path):
    scripted = torch.jit.script(nn.Sequential(nn.Linear(2, 2)))
    scripted.save(str(tmp_path / "m.ts"))
    result = scan_file(tmp_path / "m.ts")
    assert result.formats == ["torchscript"]
    assert result.findings == []


def test_numpy_arrays_clean_object_arrays_scanned(tmp_path):
    np.save(tmp_path / "a.npy", np.arange(12, dtype=np.float32).reshape(3, 4))
    np.savez(tmp_path / "z.npz", a=np.zeros(3), b=np.ones((2, 2), dtype=np.int64))
    rec = np.zeros(2, dtype=[("x", "<f4"), ("y", "<i8", (2,))])
    np.save(tmp_path / "rec.npy", rec)
    for name in ("a.npy", "z.npz", "rec.npy"):
        assert scan_file(tmp_path / name).findings == [], name
    np.save(tmp_path / "obj.npy", np.array([Payload()], dtype=object), allow_pickle=True)
    result = scan_file(tmp_path / "obj.npy")
    hits = [f for f in result.findings if f.symbol and f.symbol.endswith("system")]
    assert hits and hits[0].severity is Severity.critical
    assert hits[0].offset is not None and hits[0].offset > 10  # offset in the file


def test_npy_header_parser_is_strict():
    assert parse_literal("{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }") == {
        "descr": "<f4",
        "fortran_order": False,
        "shape": (3, 4),
    }
    for bad in ("{'a': __import__('os')}", "{'a': 1+1}", "{'a': 1", "[1, 2] junk"):
        with pytest.raises(ValueError):
            parse_literal(bad)


# --- safetensors ---------------------------------------------------------------------------


def safetensors_bytes(header: dict, data: bytes, size: int | None = None) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text) if size is None else size) + text + data


def test_safetensors_clean_and_anomalies(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3, 2), "b": torch.ones(2)}, str(tmp_path / "m.safetensors"))
    assert scan_file(tmp_path / "m.safetensors").findings == []

    good = {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}
    cases = {
        "header": safetensors_bytes(good, b"\0" * 8, size=10**6),  # header size > file
        "tensor": safetensors_bytes(
            {"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4000]}}, b"\0" * 8
        ),
        "overlap": safetensors_bytes(
            {
                "a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]},
            },
            b"\0" * 8,
        ),
        "metadata": safetensors_bytes({**good, "__metadata__": {"k": 1}}, b"\0" * 8),
        "trailing": safetensors_bytes(good, b"\0" * 8 + b"PAYLOAD!"),
    }
    bad_dtype = {"w": {"dtype": "EVIL", "shape": [-1], "data_offsets": [0, 8]}}
    cases["tensor-dtype"] = safetensors_bytes(bad_dtype, b"\0" * 8)
    for name, blob in cases.items():
        (tmp_path / f"{name}.safetensors").write_bytes(blob)
        result = scan_file(tmp_path / f"{name}.safetensors")
        expected = "safetensors." + name.split("-")[0]
        assert expected in rules(result), (name, result.findings)
        assert all(f.severity is Severity.medium for f in result.findings)
    (tmp_path / "json.safetensors").write_bytes(struct.pack("<Q", 6) + b"{nope}")
    assert "safetensors.json" in rules(scan_file(tmp_path / "json.safetensors"))


# --- ONNX ----------------------------------------------------------------------------------


def tiny_onnx(domain: str = "", location: str | None = None):
    from onnx import TensorProto, helper

    weight = helper.make_tensor("W", TensorProto.FLOAT, [2, 2], [1.0, 0.0, 0.0, 1.0])
    if location is not None:
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        entry = weight.external_data.add()
        entry.key, entry.value = "location", location
    node = helper.make_node("MatMul", ["x", "W"], ["y"], domain=domain)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[weight],
    )
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_onnx_clean_external_data_and_custom_domain(tmp_path):
    import onnx

    onnx.save(tiny_onnx(), str(tmp_path / "ok.onnx"))
    ok = scan_file(tmp_path / "ok.onnx")
    assert ok.formats == ["onnx"] and ok.findings == []

    onnx.save(tiny_onnx(location="../../etc/passwd"), str(tmp_path / "escape.onnx"))
    (hit,) = scan_file(tmp_path / "escape.onnx").findings
    assert (hit.rule, hit.severity, hit.symbol) == (
        "onnx.external-data",
        Severity.high,
        "../../etc/passwd",
    )
    onnx.save(tiny_onnx(location="weights/w.bin"), str(tmp_path / "inside.onnx"))
    assert scan_file(tmp_path / "inside.onnx").findings == []

    onnx.save(tiny_onnx(domain="com.evil"), str(tmp_path / "custom.onnx"))
    (hit,) = scan_file(tmp_path / "custom.onnx").findings
    assert (hit.rule, hit.severity) == ("onnx.custom-op", Severity.low)


def test_onnx_subgraph_custom_op_is_found(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    inner = helper.make_graph(
        [helper.make_node("Evil", ["x"], ["z"], domain="com.evil")],
        "then",
        [],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    node = helper.make_node("If", ["c"], ["z"], then_branch=inner, else_branch=inner)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1])],
    )
    onnx.save(helper.make_model(graph), str(tmp_path / "sub.onnx"))
    assert rules(scan_file(tmp_path / "sub.onnx")) == {"onnx.custom-op"}


# --- GGUF ----------------------------------------------------------------------------------


def gguf_bytes(kvs: dict[str, str]) -> bytes:
    def s(text: str) -> bytes:
        raw = text.encode()
        return struct.pack("<Q", len(raw)) + raw

    out = b"GGUF" + struct.pack("<IQQ", 3, 0, len(kvs) + 1)
    out += s("general.alignment") + struct.pack("<II", 4, 32)
    for key, value in kvs.items():
        out += s(key) + struct.pack("<I", 8) + s(value)
    return out


BENIGN_TEMPLATE = (
    "{%- set ns = namespace(first=true) -%}{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ message['content'] | trim }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
HOSTILE = [
    "{{ cycler.__init__.__globals__.os.popen('id').read() }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages|attr('\\x5f\\x5fclass\\x5f\\x5f') }}",
    "{{ self._TemplateReference__context }}",
    "{{ lipsum['__globals__'] }}",
]


def test_gguf_chat_templates(tmp_path):
    path = tmp_path / "ok.gguf"
    path.write_bytes(gguf_bytes({"general.name": "m", "tokenizer.chat_template": BENIGN_TEMPLATE}))
    ok = scan_file(path)
    assert ok.formats == ["gguf"] and ok.findings == []
    for i, template in enumerate(HOSTILE):
        path = tmp_path / f"evil{i}.gguf"
        path.write_bytes(gguf_bytes({"tokenizer.chat_template.tool_use": template}))
        result = scan_file(path)
        assert rules(result) == {"gguf.template"}, template
        assert all(f.severity is Severity.critical for f in result.findings)


def test_gguf_malformed_headers(tmp_path):
    huge = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 10**15)
    bad_version = b"GGUF" + struct.pack("<IQQ", 99, 0, 0)
    for name, blob in {"huge": huge, "version": bad_version, "cut": gguf_bytes({})[:-3]}.items():
        (tmp_path / f"{name}.gguf").write_bytes(blob)
        assert rules(scan_file(tmp_path / f"{name}.gguf")) == {"gguf.header"}, name


# --- Keras, skops, boosters ----------------------------------------------------------------


def keras_config(layer: dict) -> dict:
    dense = {"module": "keras.layers", "class_name": "Dense", "config": {"units": 2}}
    return {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"layers": [dense, layer]},
        "registered_name": None,
    }


LAMBDA = {
    "module": "keras.layers",
    "class_name": "Lambda",
    "config": {"name": "lam", "function": {"class_name": "__lambda__", "config": {"code": "4wA="}}},
}
CUSTOM = {"module": "evil_pkg.layers", "class_name": "Backdoor", "registered_name": "evil>Backdoor"}


def write_keras(path: Path, config: dict) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.4.0"}))
    return path


def test_keras_zip_lambda_and_foreign_module(tmp_path):
    benign = keras_config({"module": "keras.layers", "class_name": "ReLU", "config": {}})
    assert scan_file(write_keras(tmp_path / "ok.keras", benign)).findings == []
    lam = scan_file(write_keras(tmp_path / "lam.keras", keras_config(LAMBDA)))
    assert "keras.lambda" in rules(lam) and lam.worst is Severity.critical
    assert "keras" in lam.formats
    custom = scan_file(write_keras(tmp_path / "custom.keras", keras_config(CUSTOM)))
    assert rules(custom) == {"keras.module"}


def test_keras_h5_model_config(tmp_path):
    import h5py

    for name, layer in {"ok": {"class_name": "Dense", "config": {}}, "lam": LAMBDA}.items():
        with h5py.File(tmp_path / f"{name}.h5", "w") as f:
            f.attrs["model_config"] = json.dumps(keras_config(layer))
    assert scan_file(tmp_path / "ok.h5").findings == []
    lam = scan_file(tmp_path / "lam.h5")
    assert "keras.lambda" in rules(lam) and "keras-h5" in lam.formats


@pytest.mark.slow
def test_skops_xgboost_and_lightgbm_files_are_not_flagged(tmp_path):
    skops_io = pytest.importorskip("skops.io")
    from sklearn.linear_model import LogisticRegression

    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    skops_io.dump(LogisticRegression().fit(x, y), tmp_path / "m.skops")
    result = scan_file(tmp_path / "m.skops")
    assert "skops" in result.formats and result.findings == []
    xgb = pytest.importorskip("xgboost")
    booster = xgb.train({"max_depth": 2}, xgb.DMatrix(x, label=y), num_boost_round=2)
    booster.save_model(str(tmp_path / "m.json"))
    assert scan_file(tmp_path / "m.json").findings == []
    lgb = pytest.importorskip("lightgbm")
    params = {"num_leaves": 3, "min_data_in_leaf": 2, "verbose": -1}
    lgb.train(params, lgb.Dataset(x, label=y), num_boost_round=2).save_model(tmp_path / "m.txt")
    result = scan_file(tmp_path / "m.txt")
    assert result.formats == ["unknown"] and result.findings == []


def test_pickle_payload_in_every_protocol(tmp_path):
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        path = tmp_path / f"p{proto}.pkl"
        path.write_bytes(pickle.dumps(Payload(), protocol=proto))
        result = scan_file(path)
        assert any(f.symbol and f.symbol.endswith("system") for f in result.findings), proto


def test_joblib_and_sklearn_files_pass_with_their_profiles(tmp_path):
    joblib = pytest.importorskip("joblib")
    from sklearn.linear_model import LogisticRegression

    x, y = np.random.default_rng(0).normal(size=(20, 3)), np.arange(20) % 2
    model = LogisticRegression().fit(x, y)
    joblib.dump(model, tmp_path / "lr.joblib")
    joblib.dump(model, tmp_path / "lrz.joblib", compress=("zlib", 3))
    for name in ("lr.joblib", "lrz.joblib"):
        strict = scan_file(tmp_path / name)
        assert "joblib" in strict.formats and strict.findings  # core alone refuses sklearn
        assert scan_file(tmp_path / name, profiles=("sklearn", "joblib")).findings == []
    joblib.dump(Payload(), tmp_path / "evil.joblib")
    evil = scan_file(tmp_path / "evil.joblib", profiles=("sklearn", "joblib"))
    assert any(f.symbol and f.symbol.endswith("system") for f in evil.findings)
