"""The JSON Schema of a predict body for one model: what the OpenAPI document publishes.

:func:`predict_body_schemas` turns the :class:`~bastion.serve.validation.RequestSpec`
the gateway validates against into schemas a client (or a schema-driven fuzzer) can build
valid requests from: the batch size (1 .. ``limits.max_batch``), the sample shape as nested
arrays of exactly that length, each value's least and greatest admissible value
(:meth:`RequestSpec.admissible`: the bounds plus the tolerance's slack, the same numbers the
server checks), and ``integer`` for integer features. Per-feature bounds become one schema
per position (``prefixItems``); with feature names, a sample may also be an object keyed by
name. The base64 form is described as far as JSON Schema can: its ``shape`` exactly, its
string as base64; that the decoded float32 values lie in bounds is in the description.

The server's own checks stay :func:`~bastion.serve.validation.parse_predict_body`; the
schema is derived from the same record, so the two cannot drift apart.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bastion.serve.validation import RequestSpec

JsonSchema = dict[str, Any]

INPUTS = "PredictInputs"
RECORDS = "PredictRecords"
BASE64 = "PredictBase64"
BODY = "PredictBody"
_BASE64_PATTERN = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$"


def _value(lo: float, hi: float, integer: bool) -> JsonSchema:
    kind = "integer" if integer else "number"
    return {"type": kind, "minimum": float(lo), "maximum": float(hi)}


def _array(items: JsonSchema | list[JsonSchema], n: int) -> JsonSchema:
    out: JsonSchema = {"type": "array", "minItems": n, "maxItems": n}
    if isinstance(items, list):
        out["prefixItems"] = items
        out["items"] = False
    else:
        out["items"] = items
    return out


def sample_schema(spec: RequestSpec) -> JsonSchema:
    """One sample: nested arrays of the sample shape, each value within its bounds."""
    lo, hi = spec.admissible()
    shape = spec.sample_shape
    per_feature = lo.size > 1 or bool(spec.integer)
    if not per_feature:
        schema = _value(lo[0], hi[0], False)
        for n in reversed(shape):
            schema = _array(schema, n)
        return schema
    d = spec.sample_size
    lo_a = np.broadcast_to(lo, (d,))
    hi_a = np.broadcast_to(hi, (d,))
    whole = set(spec.integer)
    leaves = [_value(lo_a[i], hi_a[i], i in whole) for i in range(d)]

    def build(level: int, start: int) -> JsonSchema:
        if level == len(shape) - 1:
            return _array(leaves[start : start + shape[level]], shape[level])
        step = int(np.prod(shape[level + 1 :]))
        parts = [build(level + 1, start + j * step) for j in range(shape[level])]
        return _array(parts, shape[level])

    return build(0, 0)


def _batch(items: JsonSchema, spec: RequestSpec) -> JsonSchema:
    return {"type": "array", "minItems": 1, "maxItems": spec.max_batch, "items": items}


def predict_body_schemas(spec: RequestSpec) -> dict[str, JsonSchema]:
    """Component schemas of the predict body: :data:`BODY` (one of the forms below) and
    each form (:data:`INPUTS`, :data:`BASE64`, and :data:`RECORDS` with feature names)."""
    shape_text = ", ".join(map(str, spec.sample_shape))
    forms: dict[str, JsonSchema] = {
        INPUTS: {
            "title": INPUTS,
            "type": "object",
            "description": f"one nested array per sample, each of shape [{shape_text}], "
            "values within the model's input bounds",
            "properties": {"inputs": _batch(sample_schema(spec), spec)},
            "required": ["inputs"],
            "additionalProperties": False,
        }
    }
    if spec.feature_names and len(spec.sample_shape) == 1:
        lo, hi = spec.admissible()
        d = spec.sample_size
        lo_a, hi_a = np.broadcast_to(lo, (d,)), np.broadcast_to(hi, (d,))
        whole = set(spec.integer)
        record = {
            "type": "object",
            "properties": {
                name: _value(lo_a[i], hi_a[i], i in whole)
                for i, name in enumerate(spec.feature_names)
            },
            "required": list(spec.feature_names),
            "additionalProperties": False,
        }
        forms[RECORDS] = {
            "title": RECORDS,
            "type": "object",
            "description": "one object per sample, every feature by name",
            "properties": {"inputs": _batch(record, spec)},
            "required": ["inputs"],
            "additionalProperties": False,
        }
    shape_items = [{"type": "integer", "minimum": 1, "maximum": spec.max_batch}]
    shape_items += [{"const": int(n)} for n in spec.sample_shape]
    forms[BASE64] = {
        "title": BASE64,
        "type": "object",
        "description": "base64 of little-endian float32, n samples of the sample shape; the "
        "decoded length must be 4 × n × the sample size and every value within the bounds",
        "properties": {
            "b64": {"type": "string", "contentEncoding": "base64", "pattern": _BASE64_PATTERN},
            "shape": _array(shape_items, len(shape_items)),
        },
        "required": ["b64", "shape"],
        "additionalProperties": False,
    }
    refs = [{"$ref": f"#/components/schemas/{name}"} for name in forms]
    body = {
        "title": BODY,
        "description": "a batch of samples for the served model, in one of these forms",
        "anyOf": refs,
    }
    return {BODY: body, **forms}
