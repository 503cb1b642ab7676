"""Property-based fuzzing of the parsers of user files (issue 14): YAML profiles, threat
models (file and API), policies and rules, recipes, guard configurations, IDX files and
folders, ``.npz`` and CSV datasets.

Property, for each parser: given any input it either returns a valid result or raises the
project's own error type (``bastion.errors.*``) with a message; never another exception,
never a hang (bounded example counts and a per-example ``deadline``). Inputs are drawn both
structured (close to valid, to reach the deep checks) and raw (random bytes or text).
Fast by default (40 examples per parser); ``BASTION_FUZZ_EXAMPLES=N`` runs N per parser
for the thorough run. Models, audit rows and HTTP bodies: test_fuzz_models_audit_http.py.
"""

from __future__ import annotations

import csv
import gzip
import io
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bastion.errors import BastionError
from tests.reliability.fuzzing import (
    DOCS,
    FUZZ,
    KEYS,
    VALUES,
    forged_npy,
    outcome,
    scratch,
    write,
    yaml_files,
)

# --------------------------------------------------------------------------- YAML files


@FUZZ
@given(text=yaml_files(top={"model": "m"}))
def test_profiles(text: str) -> None:
    from bastion.assess.profile import Profile, load_profile

    out = outcome(load_profile, write(text, "profile.yaml"))
    assert isinstance(out, (Profile, BastionError))


@FUZZ
@given(text=yaml_files())
def test_threat_models(text: str) -> None:
    from bastion.assess.schema import ThreatModel, attack_names, probe_names
    from bastion.config import load_yaml_model

    out = outcome(load_yaml_model, ThreatModel, write(text, "threat.yaml"))
    if isinstance(out, ThreatModel):  # a valid threat model names only known things
        assert set(out.attacks) <= set(attack_names())
        assert set(out.skip) | set(out.probes or []) <= set(probe_names())


@FUZZ
@given(doc=DOCS)
def test_threat_models_through_the_api(doc: object) -> None:
    """`bastion.assess(threat={...})` validates a dict as the CLI does."""
    from bastion.assess.schema import ThreatModel
    from bastion.config import validate

    outcome(validate, ThreatModel, doc, "threat")


RULE_TOKENS = [
    "robust_accuracy",
    "score",
    "sanity_warnings",
    "count",
    "risks",
    "membership",
    "tpr_at_fpr",
    "evasion",
    "dp",
    "epsilon",
    "attack",
    "eps",
    "priority",
    "high",
    ".",
    "(",
    ")",
    ",",
    "=",
    ">=",
    "<=",
    "==",
    "!=",
    ">",
    "<",
    "0.1",
    "8/255",
    "1e999",
    "-3",
    "0/0",
    "1e400/1e400",
    "'x'",
    '"y"',
    "apgd-ce",
    "if",
    "@",
    "status",
    "open",
]
RULES = st.one_of(
    st.lists(st.sampled_from(RULE_TOKENS), max_size=10).map(" ".join),
    st.lists(st.sampled_from(RULE_TOKENS), max_size=10).map("".join),
    st.text(max_size=40),
)


@FUZZ
@given(rule=RULES)
def test_policy_rules(rule: str) -> None:
    import math

    from bastion.gate.policy import compile_rule

    out = outcome(compile_rule, rule)
    if not isinstance(out, BastionError):
        comparison, _ = out
        assert math.isfinite(comparison.threshold)


@FUZZ
@given(
    doc=st.one_of(
        DOCS,
        st.lists(st.one_of(RULES, st.dictionaries(KEYS, st.one_of(RULES, VALUES))), max_size=4),
        st.fixed_dictionaries({"rules": st.lists(RULES, max_size=4)}),
    ),
    text=yaml_files(),
)
def test_policies(doc: object, text: str) -> None:
    from bastion.gate.policy import load_policy, policy_from_data

    outcome(policy_from_data, doc, "policy.yaml")
    outcome(load_policy, write(text, "policy.yaml"))


STEP_NAMES = st.sampled_from(["standard", "trades", "sanitize", "dp_sgd", "pgd", "fast", "x"])
RECIPES = st.one_of(
    st.lists(STEP_NAMES, max_size=3).map("+".join),
    st.text(max_size=30),
    DOCS,
    st.lists(st.one_of(STEP_NAMES, st.dictionaries(STEP_NAMES, VALUES, max_size=1)), max_size=3),
    st.builds(lambda n, p: {"name": n, **p}, STEP_NAMES, st.dictionaries(KEYS, VALUES)),
)


@FUZZ
@given(spec=RECIPES, text=yaml_files())
def test_recipes(spec: object, text: str) -> None:
    from bastion.defenses.recipes import Recipe, parse_recipe

    out = outcome(parse_recipe, spec, "--recipe")
    if isinstance(out, Recipe):  # exactly one training step, last
        assert [s.kind for s in out.steps][-1] == "train"
    outcome(parse_recipe, write(text, "recipe.yaml"))


@FUZZ
@given(text=yaml_files())
def test_guard_configs(text: str) -> None:
    from bastion.guard.config import load_guard_config

    outcome(load_guard_config, write(text, "guard.yaml"))


# --------------------------------------------------------------------------- IDX


@st.composite
def idx_files(draw: st.DrawFn) -> bytes:
    code = draw(st.sampled_from([0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E, 0x00, 0xFF]))
    ndim = draw(st.integers(0, 4))
    small = draw(st.booleans())
    side = st.integers(0, 5) if small else st.integers(0, 2**32 - 1)
    dims = draw(st.lists(side, min_size=ndim, max_size=ndim))
    header = bytes([0, 0, code, ndim]) + struct.pack(f">{ndim}I", *dims)
    itemsize = {0x08: 1, 0x09: 1, 0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    n = int(np.prod(dims, dtype=object)) * itemsize if small and ndim else 0
    body = draw(st.binary(min_size=n, max_size=n)) if n < 4096 else b""
    raw = header + body + draw(st.sampled_from([b"", b"\x00"]))
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    if cut is not None:
        raw = raw[:cut]
    if draw(st.booleans()):
        raw = gzip.compress(raw)
        if draw(st.booleans()):  # a corrupt gzip stream
            at = draw(st.integers(0, len(raw) - 1))
            raw = raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :]
    return draw(st.one_of(st.just(raw), st.binary(max_size=64)))


@FUZZ
@given(raw=idx_files())
def test_idx_files(raw: bytes) -> None:
    from bastion.data.idx import read_idx

    out = outcome(read_idx, write(raw, "t10k-images-idx3-ubyte"))
    assert isinstance(out, (np.ndarray, BastionError))


@st.composite
def idx_folders(draw: st.DrawFn) -> Path:
    folder = scratch()
    for stem_x, stem_y in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
    ):
        n = draw(st.integers(0, 6))
        side = draw(st.integers(1, 5))
        x = draw(hnp.arrays(np.uint8, (n, side, side)))
        ny = draw(st.sampled_from([n, n, max(0, n - 1)]))
        y = draw(hnp.arrays(np.uint8, (ny,), elements=st.integers(0, 12)))
        for stem, arr in ((stem_x, x), (stem_y, y)):
            dims = struct.pack(f">{arr.ndim}I", *arr.shape)
            (folder / stem).write_bytes(bytes([0, 0, 0x08, arr.ndim]) + dims + arr.tobytes())
    return folder


@FUZZ
@given(folder=idx_folders())
def test_idx_folders(folder: Path) -> None:
    from bastion.data import DataBundle, load_dataset

    out = outcome(load_dataset, str(folder))
    if isinstance(out, DataBundle):
        assert len(out.train) and len(out.test)


# --------------------------------------------------------------------------- npz and CSV

DTYPES = st.sampled_from(
    [np.float32, np.float64, np.int64, np.uint8, np.int8, np.uint64, np.bool_, np.complex64]
)
SHAPES = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)
ARRAYS = st.one_of(
    hnp.arrays(DTYPES, SHAPES),
    hnp.arrays(
        np.float32,
        st.tuples(st.integers(2, 12), st.integers(1, 4)),
        elements=st.floats(0, 1, width=32),
    ),
    hnp.arrays(np.int64, st.integers(2, 12), elements=st.integers(0, 3)),
    hnp.arrays(np.dtype("<U3"), st.integers(0, 4)),
)
NPZ_KEYS = st.sampled_from(["x", "y", "x_train", "y_train", "x_test", "y_test", "class_names"])
OPTIONS = st.fixed_dictionaries(
    {},
    optional={
        "modality": st.sampled_from(["auto", "image", "tabular", "sequence"]),
        "shape": st.lists(st.integers(-2, 5), max_size=4),
        "layout": st.sampled_from(["auto", "NCHW", "NHWC"]),
        "scale": st.one_of(st.floats(), st.integers(-1, 255)),
        "lower": st.lists(st.floats(), max_size=3),
        "upper": st.lists(st.floats(), max_size=3),
        "integer": st.one_of(st.sampled_from(["auto", "none"]), st.lists(st.integers(-2, 6))),
        "frozen": st.lists(st.integers(-2, 6), max_size=3),
        "label_column": st.one_of(st.integers(-3, 5), st.sampled_from(["y", "label", "b", "²"])),
    },
)


@st.composite
def datasets(draw: st.DrawFn) -> dict[str, np.ndarray]:
    """A valid dataset (tabular rows or images, two or three classes), then perhaps one
    mutation a careless user or an attacker makes (labels past the classes, NaN, a split
    with no rows, x and y of different lengths, huge values, a wrong label type)."""
    n = draw(st.integers(2, 16))
    image = draw(st.booleans())
    shape = (n, 1, 3, 3) if image else (n, draw(st.integers(1, 4)))
    x = draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, 2)))
    y[:2] = [0, 1]
    arrays: dict[str, np.ndarray] = {"x": x, "y": y}
    if draw(st.booleans()):
        cut = draw(st.integers(1, n - 1))
        arrays = {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}
    mutation = draw(
        st.sampled_from(
            [
                "none",
                "none",
                "labels+",
                "labels-",
                "label-huge",
                "nan",
                "inf",
                "empty",
                "length",
                "float-labels",
                "uint64",
                "complex",
                "names-0d",
                "names-short",
                "1-sample",
                "big",
            ]
        )
    )
    key_x = "x" if "x" in arrays else "x_test"
    key_y = "y" if "y" in arrays else "y_test"
    if mutation == "labels+":
        arrays[key_y] = arrays[key_y] + draw(st.integers(3, 300))
    elif mutation == "labels-":
        arrays[key_y] = arrays[key_y] - 5
    elif mutation == "label-huge":
        arrays[key_y] = arrays[key_y].astype(np.float64) * draw(st.sampled_from([1e12, 1e300]))
    elif mutation in ("nan", "inf"):
        arrays[key_x] = arrays[key_x].copy()
        arrays[key_x].flat[0] = np.nan if mutation == "nan" else np.inf
    elif mutation == "empty":
        arrays[key_x], arrays[key_y] = arrays[key_x][:0], arrays[key_y][:0]
    elif mutation == "length":
        arrays[key_y] = arrays[key_y][:-1]
    elif mutation == "float-labels":
        arrays[key_y] = arrays[key_y] + 0.5
    elif mutation == "uint64":
        arrays[key_y] = arrays[key_y].astype(np.uint64) + np.uint64(2**63)
    elif mutation == "complex":
        arrays[key_x] = arrays[key_x].astype(np.complex64)
    elif mutation == "names-0d":
        arrays["class_names"] = np.array("cat")
    elif mutation == "names-short":
        arrays["class_names"] = np.array(["a"])
    elif mutation == "1-sample" and "x" in arrays:
        arrays = {"x": x[:1], "y": y[:1]}
    elif mutation == "big":
        arrays[key_x] = arrays[key_x].astype(np.float64) * 1e300
    return arrays


@st.composite
def npz_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["dataset"] * 4 + ["arrays", "corrupt", "forged", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=200))
    buf = io.BytesIO()
    if kind == "forged":
        with zipfile.ZipFile(buf, "w") as zf:
            shape = draw(st.sampled_from([(10**12,), (2**40, 2**20), (3, 4), (0,)]))
            zf.writestr("x.npy", forged_npy(shape))
            zf.writestr("y.npy", forged_npy((3,)))
        return buf.getvalue()
    if kind == "arrays":
        arrays = draw(st.dictionaries(NPZ_KEYS, ARRAYS, min_size=1, max_size=5))
    else:
        arrays = draw(datasets())
    np.savez(buf, **arrays)
    raw = buf.getvalue()
    if kind == "corrupt":
        at = draw(st.integers(0, len(raw) - 1))
        raw = raw[:at] if draw(st.booleans()) else raw[:at] + b"\xff" + raw[at + 1 :]
    return raw


def _bundle_ok(out: Any) -> None:
    from bastion.data import DataBundle

    if isinstance(out, DataBundle):
        assert len(out.train) > 0 and len(out.test) > 0
        for split in (out.train, out.test):
            assert torch.isfinite(split.x).all()
            assert int(split.y.max()) < split.num_classes


@FUZZ
@given(raw=npz_files(), options=OPTIONS)
def test_npz_files(raw: bytes, options: dict) -> None:
    from bastion.config import validate
    from bastion.data.loaders import DataOptions, load_npz

    opts = outcome(validate, DataOptions, options, "options")
    if isinstance(opts, BastionError):
        opts = None
    _bundle_ok(outcome(load_npz, write(raw, "data.npz"), seed=0, options=opts))


CELLS = st.one_of(
    st.integers(-5, 20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["", "nan", "inf", "1e999", "-1e999", "x", "label", "1_0", " 3 ", "\x00"]),
    st.text(max_size=6),
)


@st.composite
def csv_files(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["dataset"] * 3 + ["cells", "raw"]))
    if kind == "raw":
        return draw(st.text(max_size=300))
    if kind == "dataset":
        arrays = draw(datasets())
        x = arrays.get("x", arrays.get("x_train"))
        y = arrays.get("y", arrays.get("y_train"))
        if len(x) != len(y) or x.dtype.kind == "c" or not len(x):
            return ""
        x = x.reshape(len(x), max(1, x[0].size if len(x) else 1))
        rows = [[repr(float(v)) for v in row] + [str(lab)] for row, lab in zip(x, y, strict=True)]
        header = [f"f{i}" for i in range(x.shape[1])] + ["label"]
        rows = [header, *rows] if draw(st.booleans()) else rows
    else:
        width = draw(st.integers(1, 5))
        rows = draw(
            st.lists(
                st.lists(CELLS, min_size=width, max_size=width + draw(st.integers(0, 1))),
                max_size=12,
            )
        )
    buf = io.StringIO()
    csv.writer(buf).writerows(rows)
    text = buf.getvalue()
    if draw(st.integers(0, 9)) == 9:  # a field over csv's size limit
        text += "1," + "9" * 140_000 + "\n"
    return text


@FUZZ
@given(text=csv_files(), options=OPTIONS)
def test_csv_files(text: str, options: dict) -> None:
    from bastion.config import validate
    from bastion.data.loaders import DataOptions, load_csv

    opts = outcome(validate, DataOptions, options, "options")
    if isinstance(opts, BastionError):
        opts = None
    _bundle_ok(outcome(load_csv, write(text, "data.csv"), seed=0, options=opts))
