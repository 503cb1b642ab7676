"""The predict body published in the OpenAPI document describes exactly what the server
accepts: for bodies drawn in and around the bounds, "valid against the schema" and "the
server accepts it" agree (image specs, per-feature tabular bounds, integer features, named
features)."""

from __future__ import annotations

import base64
import json
from typing import Any

import jsonschema_rs
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.data.spec import InputSpec, image_spec
from bastion.serve.body_schema import BASE64, BODY, INPUTS, RECORDS, predict_body_schemas
from bastion.serve.validation import InputError, RequestSpec, parse_predict_body

IMAGE = RequestSpec.from_spec(image_spec((1, 4, 4)), max_batch=3, tolerance=1e-4)
TABULAR = RequestSpec.from_spec(
    InputSpec(
        modality="tabular",
        shape=[4],
        source_layout="flat",
        lower=[0.0, -5.0, 10.0, 0.0],
        upper=[1.0, 5.0, 250.0, 3.0],
        integer=[2, 3],
        feature_names=["age", "score", "weight", "kids"],
    ),
    max_batch=3,
    tolerance=1e-4,
)
SPECS = {"image": IMAGE, "tabular": TABULAR}


def _validator(spec: RequestSpec, name: str = BODY) -> Any:
    schemas = predict_body_schemas(spec)
    root = {"$ref": f"#/components/schemas/{name}", "components": {"schemas": schemas}}
    return jsonschema_rs.Draft202012Validator(root)


def _accepted(body: Any, spec: RequestSpec) -> bool:
    try:
        parse_predict_body(json.dumps(body).encode(), spec)
    except InputError:
        return False
    return True


def _value(draw: Any, lo: float, hi: float, integer: bool) -> float:
    """A value inside, on, or just past the admissible range."""
    edge = st.sampled_from(
        [lo, hi, np.nextafter(lo, -np.inf), np.nextafter(hi, np.inf), lo - 1.0, hi + 1.0]
    )
    if integer:
        whole = st.integers(int(np.ceil(lo)) - 1, int(np.floor(hi)) + 1).map(float)
        fraction = st.floats(lo, hi).map(lambda v: np.floor(v) + 0.5)
        return float(draw(st.one_of(whole, fraction)))
    return float(draw(st.one_of(st.floats(lo, hi), edge)))


@st.composite
def bodies(draw: Any, spec: RequestSpec) -> Any:
    lo, hi = spec.admissible()
    d = spec.sample_size
    lo_a, hi_a = np.broadcast_to(lo, (d,)), np.broadcast_to(hi, (d,))
    n = draw(st.integers(0, spec.max_batch + 1))
    whole = set(spec.integer)
    flat = [[_value(draw, lo_a[i], hi_a[i], i in whole) for i in range(d)] for _ in range(n)]
    if spec.feature_names and draw(st.booleans()):
        names = spec.feature_names
        return {"inputs": [dict(zip(names, row, strict=True)) for row in flat]}
    shape = draw(st.sampled_from([spec.sample_shape, (d + 1,)]))
    samples = [np.resize(np.array(row), shape).tolist() for row in flat]
    return {"inputs": samples}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_schema_and_server_agree(name):
    spec = SPECS[name]
    validator = _validator(spec)

    @settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(body=bodies(spec))
    def agree(body):
        assert validator.is_valid(body) == _accepted(body, spec), body

    agree()


def test_the_schema_states_the_shape_bounds_and_integers():
    schemas = predict_body_schemas(TABULAR)
    assert set(schemas) == {BODY, INPUTS, RECORDS, BASE64}
    batch = schemas[INPUTS]["properties"]["inputs"]
    assert (batch["minItems"], batch["maxItems"]) == (1, 3)
    features = batch["items"]["prefixItems"]
    assert [f["type"] for f in features] == ["number", "number", "integer", "integer"]
    assert features[2]["minimum"] == pytest.approx(10.0 - 1e-4 * 240)
    assert features[2]["maximum"] == pytest.approx(250.0 + 1e-4 * 240)
    record = schemas[RECORDS]["properties"]["inputs"]["items"]
    assert record["required"] == ["age", "score", "weight", "kids"]
    image = predict_body_schemas(IMAGE)
    assert RECORDS not in image
    sample = image[INPUTS]["properties"]["inputs"]["items"]
    assert [sample["minItems"], sample["items"]["minItems"]] == [1, 4]
    shape = image[BASE64]["properties"]["shape"]["prefixItems"]
    assert shape[1:] == [{"const": 1}, {"const": 4}, {"const": 4}]


def test_a_valid_base64_body_matches_its_form():
    x = np.full((2, 1, 4, 4), 0.5, dtype="<f4")
    body = {"b64": base64.b64encode(x.tobytes()).decode(), "shape": [2, 1, 4, 4]}
    assert _validator(IMAGE, BASE64).is_valid(body) and _accepted(body, IMAGE)
    assert not _validator(IMAGE, BASE64).is_valid({**body, "shape": [2, 1, 4, 5]})
    assert not _validator(IMAGE, BASE64).is_valid({**body, "b64": "%%%"})


def test_the_gateway_publishes_the_typed_body(gw):
    spec = gw.client.get("/openapi.json").json()
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert body["schema"] == {"$ref": f"#/components/schemas/{BODY}"}
    inputs = spec["components"]["schemas"][INPUTS]["properties"]["inputs"]
    leaf = inputs["items"]["items"]["items"]["items"]
    assert leaf["type"] == "number" and leaf["minimum"] < 0 < 1 < leaf["maximum"] < 1.001
    validator = jsonschema_rs.Draft202012Validator({"$ref": body["schema"]["$ref"], **spec})
    sample = np.full((1, 8, 8), 0.5).tolist()
    assert validator.is_valid({"inputs": [sample]})
    r = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
    assert r.status_code == 200
