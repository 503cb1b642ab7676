"""Static pickle analysis: nothing in these tests is ever unpickled."""

from __future__ import annotations

import io
import os
import pickle
import pickletools
import struct
import time
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bastion.errors import ConfigError
from bastion.scan.allowlist import PROFILES, allowlist
from bastion.scan.findings import Severity
from bastion.scan.pickle_scan import _HANDLERS, MAX_FINDINGS, scan_pickle

CORE = allowlist()


class _System:
    def __reduce__(self):
        return (os.system, ("touch marker",))


def _scan(data: bytes, **kw):
    kw.setdefault("allow", CORE)
    return scan_pickle(data, location="m.pkl", **kw)


def _rules(findings):
    return [(f.rule, f.severity, f.symbol) for f in findings]


def _sbu(s: str) -> bytes:  # SHORT_BINUNICODE
    b = s.encode()
    return b"\x8c" + bytes([len(b)]) + b


def _torch_pkl(obj) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    with zipfile.ZipFile(buf) as z:
        return z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))


def test_every_opcode_has_a_handler():
    assert {op.code.encode("latin-1")[0] for op in pickletools.opcodes} == set(_HANDLERS)


@pytest.mark.parametrize("proto", [0, 1, 2, 3, 4, 5])
def test_reduce_to_os_system_is_critical_at_its_offset(proto):
    data = pickle.dumps(_System(), protocol=proto)
    found = _scan(data)
    assert len(found) == 1
    f = found[0]
    assert (f.rule, f.severity) == ("pickle.global", Severity.critical)
    assert f.symbol in {"posix.system", "nt.system"}
    ops = {pos: op.name for op, _, pos in pickletools.genops(data)}
    assert ops[f.offset] in {"GLOBAL", "STACK_GLOBAL"}
    assert "REDUCE" in f.message


def test_referenced_only_global_is_high_and_called_one_critical():
    ref = b"\x80\x02cmymod\nThing\n."  # pushed, never called
    called = b"\x80\x02cmymod\nThing\n)R."
    assert _rules(_scan(ref)) == [("pickle.global", Severity.high, "mymod.Thing")]
    assert _rules(_scan(called)) == [("pickle.global", Severity.critical, "mymod.Thing")]


def test_stack_global_through_memo_is_resolved():
    # 'builtins' and 'eval' memoised, then fetched back with BINGET before STACK_GLOBAL
    body = _sbu("builtins") + b"q\x00" + _sbu("eval") + b"q\x01" + b"0" + b"h\x01" + b"\x93"
    data = b"\x80\x04" + body + _sbu("1+1") + b"\x85R."
    assert _rules(_scan(data)) == [("pickle.global", Severity.critical, "builtins.eval")]


def test_stack_global_over_computed_operands_is_unresolved():
    data = b"\x80\x04" + b"K\x01K\x02\x93" + b")R."
    assert _rules(_scan(data)) == [("pickle.unresolved-global", Severity.critical, "?")]


def test_inst_and_obj_call_their_class():
    inst = b"(S'ls'\nisubprocess\ncheck_output\n."
    assert _rules(_scan(inst)) == [("pickle.global", Severity.critical, "subprocess.check_output")]
    obj = b"(cmymod\nThing\nS'x'\no."
    assert _rules(_scan(obj)) == [("pickle.global", Severity.critical, "mymod.Thing")]


def test_ext_code_is_a_finding():
    found = _scan(b"\x80\x02\x82\x07)R.")
    assert _rules(found) == [("pickle.ext-code", Severity.critical, "copyreg-extension:7")]


def test_build_on_a_global_is_critical_even_if_allowlisted():
    data = b"\x80\x02ccollections\nOrderedDict\n}S'x'\nK\x01sb."
    assert ("pickle.build-global", Severity.critical, "collections.OrderedDict") in _rules(
        _scan(data)
    )


def test_dotted_names_are_never_allowed():
    data = b"\x80\x04" + _sbu("torch") + _sbu("_utils.os.system") + b"\x93."
    assert _rules(_scan(data))[0][0] == "pickle.global"
    assert not CORE.allowed("torch", "_utils._rebuild_tensor_v2")
    assert CORE.allowed("torch._utils", "_rebuild_tensor_v2")


def test_nested_pickle_in_bytes_is_scanned_with_location():
    inner = pickle.dumps(_System(), protocol=4)
    outer = pickle.dumps({"blob": inner}, protocol=4)
    found = _scan(outer)
    assert len(found) == 1 and found[0].severity is Severity.critical
    offset = outer.index(inner)
    assert found[0].location == f"m.pkl!bytes@{offset}"
    # depth-bounded: at the limit the nested pickle is reported, not analysed
    deep = _scan(outer, max_depth=0)
    assert _rules(deep) == [("pickle.nesting", Severity.high, None)]


def test_bytes_that_only_look_like_a_pickle_are_not_findings():
    assert _scan(pickle.dumps(b"\x80\x04" + bytes(range(200)), protocol=4)) == []


def test_appended_second_pickle_is_scanned():
    data = pickle.dumps({"a": 1}, protocol=2) + pickle.dumps(_System(), protocol=2)
    found = _scan(data)
    assert len(found) == 1 and found[0].offset > len(pickle.dumps({"a": 1}, protocol=2))


def test_truncated_and_unknown_opcodes_are_malformed():
    data = pickle.dumps(_System(), protocol=2)
    for cut in (1, 5, len(data) - 1):
        rules = {f.rule for f in _scan(data[:cut])}
        assert "pickle.malformed" in rules
    assert _rules(_scan(b"\x80\x02\xff")) == [("pickle.malformed", Severity.high, None)]
    assert _rules(_scan(b"")) == [("pickle.malformed", Severity.high, None)]
    # the global seen before the failure is still reported (exception-oriented payloads)
    assert "pickle.global" in {f.rule for f in _scan(data[:-1])}


def test_trailing_garbage_is_low():
    found = _scan(pickle.dumps([1, 2], protocol=2) + b"\xff\xfe")
    assert _rules(found) == [("pickle.trailing-data", Severity.low, None)]


def test_persistent_id_only_noted_outside_torch():
    data = b"\x80\x02(X\x07\x00\x00\x00storagectorch\nFloatStorage\nX\x01\x00\x00\x000tQ."
    assert _rules(_scan(data)) == [("pickle.persistent-id", Severity.low, None)]
    assert _scan(data, fmt="torch-zip") == []


def test_findings_are_capped():
    body = b"".join(f"cm{i}\nx\n0".encode() for i in range(MAX_FINDINGS * 3))
    found = _scan(b"\x80\x02" + body + b"N.")
    assert len(found) == MAX_FINDINGS + 1
    assert found[-1].rule == "pickle.more" and "200 more" in found[-1].message


def test_torch_state_dict_and_tensors_are_clean():
    import torch

    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.LSTM(3, 4)
    )
    assert _scan(_torch_pkl(net.state_dict()), fmt="torch-zip") == []
    mixed = {
        "h": torch.randn(2, dtype=torch.float16),
        "q": torch.quantize_per_tensor(torch.randn(3), 0.1, 0, torch.quint8),
        "p": torch.nn.Parameter(torch.randn(2)),
        "sp": torch.randn(3, 3).to_sparse(),
        "meta": (torch.Size([2]), torch.device("cpu"), torch.float32),
    }
    assert _scan(_torch_pkl(mixed), fmt="torch-zip") == []
    full = _torch_pkl(net)
    assert {f.symbol for f in _scan(full, fmt="torch-zip")} >= {"torch.nn.modules.conv.Conv2d"}
    assert _scan(full, fmt="torch-zip", allow=allowlist(["torch-modules"])) == []


@pytest.mark.parametrize("proto", [0, 2, 4, 5])
def test_numpy_arrays_are_clean(proto):
    obj = {
        "f": np.arange(6.0).reshape(2, 3),
        "s": np.float32(1.5),
        "u": np.array(["ab", "c"]),
        "o": np.array([1, None], dtype=object),
        "rec": np.zeros(2, dtype=[("a", "i4"), ("b", "f8")]),
    }
    assert _scan(pickle.dumps(obj, protocol=proto)) == []


def _iris_model():
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    x, y = load_iris(return_X_y=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LogisticRegression(max_iter=300).fit(x, y)


@pytest.mark.parametrize("proto", [0, 2, 5])
def test_sklearn_needs_its_profile(proto):
    data = pickle.dumps(_iris_model(), protocol=proto)
    without = _scan(data)
    assert "sklearn.linear_model._logistic.LogisticRegression" in {f.symbol for f in without}
    assert _scan(data, allow=allowlist(["sklearn"])) == []


def test_joblib_file_is_clean_with_its_profile(tmp_path):
    import joblib

    path = tmp_path / "m.joblib"
    joblib.dump(
        {"a": np.arange(7.0), "m": _iris_model(), "o": np.array([1, "x"], dtype=object)}, path
    )
    data = path.read_bytes()
    assert _scan(data, fmt="joblib", allow=allowlist(["sklearn", "joblib"])) == []
    assert "joblib.numpy_pickle.NumpyArrayWrapper" in {
        f.symbol for f in _scan(data, fmt="joblib", allow=allowlist(["sklearn"]))
    }


def test_joblib_object_array_payload_is_scanned(tmp_path):
    import joblib

    path = tmp_path / "bad.joblib"
    joblib.dump({"o": np.array([_System()], dtype=object)}, path)
    found = _scan(path.read_bytes(), fmt="joblib", allow=allowlist(["joblib"]))
    assert [f.severity for f in found if f.rule == "pickle.global"] == [Severity.critical]


def test_unknown_profile_names_the_valid_ones():
    with pytest.raises(ConfigError, match=r"choose from: .*sklearn"):
        allowlist(["sklern"])
    assert "core" in PROFILES and allowlist(["SKLEARN"]).profiles == ("core", "sklearn")


def test_gadgets_are_never_in_any_profile():
    every = frozenset().union(*PROFILES.values())
    for sym in (
        "builtins.getattr",
        "builtins.eval",
        "os.system",
        "functools.partial",
        "torch.load",
    ):
        assert sym not in every


def test_many_opcodes_finish_in_bounded_time():
    data = b"\x80\x02" + b"N0" * 500_000 + b"N."
    t0 = time.perf_counter()
    assert _scan(data) == []
    assert time.perf_counter() - t0 < 10


def test_huge_declared_length_is_malformed_not_allocated():
    data = b"\x80\x04\x8e" + struct.pack("<Q", 2**62) + b"xx"
    assert _rules(_scan(data)) == [("pickle.malformed", Severity.high, None)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_never_raise(data):
    for f in _scan(data):
        assert f.location.startswith("m.pkl")


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 5), st.integers(0, 10_000))
def test_mutated_payloads_never_raise(proto, seed):
    data = bytearray(pickle.dumps(_System(), protocol=proto))
    data[seed % len(data)] = (seed * 7) % 256
    _scan(bytes(data))
