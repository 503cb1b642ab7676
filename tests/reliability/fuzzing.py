"""Shared pieces of the fuzzing suites (test_fuzz_*.py): the hypothesis settings, the
property helper :func:`outcome`, scratch files, and strategies of YAML-like values whose
keys are the fields of Bastion's schemas (so drawn documents reach the deep checks)."""

from __future__ import annotations

import io
import os
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from bastion.errors import BastionError

EXAMPLES = int(os.environ.get("BASTION_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=timedelta(seconds=10),  # generous: a loaded 2-core CI box, not a tight bound
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.function_scoped_fixture,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
    database=None,
)


def outcome(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """``fn(...)``'s result, or the BastionError it raised (which must carry a message);
    any other exception propagates and fails the property."""
    try:
        return fn(*args, **kwargs)
    except BastionError as exc:
        assert str(exc).strip(), f"{type(exc).__name__} raised without a message"
        return exc


def scratch() -> Path:
    return Path(tempfile.mkdtemp(prefix="bastion-fuzz-"))


# --------------------------------------------------------------------------- values

NAMES = [
    "fgsm",
    "pgd",
    "apgd-ce",
    "apgd-t",
    "ensemble",
    "nosuch",
    "evasion",
    "blackbox",
    "membership",
    "poisoning",
    "extraction",
    "standard",
    "trades",
    "sanitize",
    "dp_sgd",
    "pgd_at",
    "fast_at",
    "inf",
    "2",
    "L2",
    "white_box",
    "scores",
    "labels",
    "auto",
    "image",
    "tabular",
    "NCHW",
    "NHWC",
    "none",
    "parent",
    "scratch",
    "robust",
    "skip",
    "fail",
    "",
    "digits",
    "x.npz",
    "../../etc/passwd",
    "a" * 300,
    "mlp",
    "cnn",
]


def _fields(model: type[BaseModel], seen: set[str]) -> None:
    for name, field in model.model_fields.items():
        seen.add(name)
        for arg in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            if isinstance(arg, type) and issubclass(arg, BaseModel) and arg.__name__ not in seen:
                seen.add(arg.__name__)
                _fields(arg, seen)


def field_names() -> list[str]:
    from bastion.assess.profile import Profile
    from bastion.defenses import recipes
    from bastion.gate.policy import PolicyConfig, RuleConfig
    from bastion.guard.config import GuardConfig

    seen: set[str] = set()
    for m in (Profile, PolicyConfig, RuleConfig, GuardConfig, *recipes.RECIPES.values()):
        _fields(m, seen)
    return sorted(n for n in seen if not n[:1].isupper())


KEYS = st.one_of(st.sampled_from(field_names()), st.text(max_size=8))
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-10, max_value=1000),
    st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True),
    st.floats(min_value=0, max_value=1),
    st.sampled_from(NAMES),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(KEYS, inner, max_size=5)),
    max_leaves=16,
)
DOCS = st.one_of(st.dictionaries(KEYS, VALUES, max_size=8), VALUES)
RAW_TEXT = st.one_of(
    st.text(max_size=200),
    st.sampled_from(
        [
            "a: 2001-13-01",
            "a: !!int abc",
            "a: !!timestamp x",
            "[" * 3000,
            "a: &x [*x]",
            "a: !!python/object/apply:os.system [true]",
            "- !!float abc",
            "a: 0x_",
            "\x00\x01",
        ]
    ),
)


def yaml_text(doc: object) -> str:
    return yaml.safe_dump(doc, allow_unicode=True)


@st.composite
def yaml_files(draw: st.DrawFn, top: dict | None = None) -> str:
    """YAML text: a structured document (optionally merged into ``top``), raw text, or a
    structured document with a random edit."""
    kind = draw(st.sampled_from(["doc", "raw", "edited"]))
    if kind == "raw":
        return draw(RAW_TEXT)
    doc = draw(DOCS)
    if top is not None and isinstance(doc, dict):
        doc = {**top, **doc}
    text = yaml_text(doc)
    if kind == "edited" and text:
        at = draw(st.integers(0, len(text)))
        text = text[:at] + draw(st.text(max_size=5)) + text[at + draw(st.integers(0, 5)) :]
    return text


def write(text: str | bytes, name: str) -> Path:
    path = scratch() / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    else:
        path.write_bytes(text)
    return path


def forged_npy(shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buf, {"descr": "<f8", "fortran_order": False, "shape": shape}
    )
    return buf.getvalue() + b"\x00" * 16
