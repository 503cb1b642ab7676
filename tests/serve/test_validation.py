"""Malformed bodies answer 4xx with a message that says what was wrong; nothing answers 5xx
unless the server has a bug, and then without a traceback."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bastion.serve.validation import InputError, InputSpec, parse_predict_body

SPEC = InputSpec(sample_shape=(1, 8, 8), bounds=(0.0, 1.0), max_batch=4)


def post(gw, content, *, headers=None, **kwargs):
    h = {**gw.auth(), "Content-Type": "application/json", **(headers or {})}
    return gw.client.post("/v1/predict", content=content, headers=h, **kwargs)


def b64(arr: np.ndarray) -> str:
    return base64.b64encode(np.asarray(arr, dtype="<f4").tobytes()).decode()


def test_both_input_forms_give_the_same_answer(gw, sample):
    a = gw.client.post("/v1/predict", json={"inputs": [sample, sample]}, headers=gw.auth())
    arr = np.array([sample, sample], dtype=np.float32)
    b = gw.client.post(
        "/v1/predict", json={"b64": b64(arr), "shape": [2, 1, 8, 8]}, headers=gw.auth()
    )
    assert a.status_code == b.status_code == 200
    assert a.json()["predictions"] == b.json()["predictions"]
    assert np.allclose(a.json()["probabilities"], b.json()["probabilities"], atol=1e-6)
    assert len(a.json()["verdicts"]) == 2 and a.json()["request_id"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"[1, 2]", 422, "must be a JSON object"),
        (b'{"inputs": [], "extra": 1}', 422, "not understood"),
        (b'{"inputs": 5}', 422, "must be an array of samples"),
        (b'{"inputs": []}', 422, "batch is empty"),
        (b'{"inputs": [[1, 2, 3]]}', 422, "must have shape [1, 8, 8], got [3]"),
        (b'{"inputs": [[[1, 2], [3]]]}', 422, "ragged"),
        (b'{"inputs": [["a"]]}', 422, "numbers only"),
        (b'{"inputs": [[true]]}', 422, "numbers only"),
        (b'{"inputs": [[null]]}', 422, "numbers only"),
        (b'{"b64": 5, "shape": [1, 1, 8, 8]}', 422, "base64 string"),
        (b'{"b64": "%%%", "shape": [1, 1, 8, 8]}', 422, "not valid base64"),
        (b'{"b64": "AAAA", "shape": [1, 1, 8, 8]}', 422, "needs 256"),
        (b'{"b64": "AAAA", "shape": [1, 8, 8]}', 422, "'shape' must be [n, 1, 8, 8]"),
        (b'{"b64": "AAAA", "shape": ["1", 1, 8, 8]}', 422, "array of integers"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "not valid JSON"),
        (b"", 422, "empty body"),
    ],
)
def test_malformed_bodies(gw, body, status, message):
    r = post(gw, body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def _with(sample, value):
    x = np.array([sample], dtype=np.float64)
    x[0, 0, 3, 3] = value
    return x


@pytest.mark.parametrize(("value", "word"), [(float("nan"), "NaN"), (float("inf"), "Inf")])
def test_nan_and_inf_are_refused_with_422(gw, sample, value, word):
    x = _with(sample, value)
    as_json = json.dumps({"inputs": x.tolist()}).encode()  # Python writes NaN / Infinity
    r = post(gw, as_json)
    assert r.status_code == 422 and f"inputs hold {word} (samples [0])" in r.json()["detail"]
    r = post(gw, json.dumps({"b64": b64(x), "shape": [1, 1, 8, 8]}).encode())
    assert r.status_code == 422 and word in r.json()["detail"]


def test_out_of_bounds_is_422(gw, sample):
    r = post(gw, json.dumps({"inputs": _with(sample, 3.0).tolist()}).encode())
    assert r.status_code == 422
    assert "within [0, 1]; got min 0, max 3" in r.json()["detail"]


def test_batch_over_the_limit_is_413(settings, gateway_factory, sample):
    small = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"max_batch": 2})}
    )
    with gateway_factory(small) as gw:
        r = gw.client.post("/v1/predict", json={"inputs": [sample] * 3}, headers=gw.auth())
        assert r.status_code == 413 and "exceeds the limit of 2" in r.json()["detail"]


def test_body_over_the_limit_is_413_from_content_length(gw):
    limit = gw.state.settings.limits.max_body_bytes
    r = post(gw, b"x" * (limit + 1))
    assert r.status_code == 413 and f"limit of {limit} bytes" in r.json()["detail"]


def test_chunked_body_over_the_limit_is_413(gw):
    limit = gw.state.settings.limits.max_body_bytes
    sent = []

    def chunks():
        for _ in range(limit // 65536 + 4):
            sent.append(1)
            yield b" " * 65536

    r = gw.client.post(
        "/v1/predict", content=chunks(), headers={**gw.auth(), "Content-Type": "application/json"}
    )
    assert r.status_code == 413
    assert "transfer-encoding" not in {
        k.lower() for k in r.request.headers if k.lower() == "content-length"
    }


def test_wrong_content_type_is_415(gw, sample):
    r = post(gw, json.dumps({"inputs": [sample]}).encode(), headers={"Content-Type": "text/plain"})
    assert r.status_code == 415 and "application/json" in r.json()["detail"]


def test_a_bug_answers_500_json_without_traceback(settings, gateway_factory, sample):
    with gateway_factory(settings, raise_server_exceptions=False) as gw:

        def broken(requests):
            raise RuntimeError("secret internal detail")

        gw.state.runtime.infer_many = broken
        r = gw.client.post("/v1/predict", json={"inputs": [sample]}, headers=gw.auth())
        assert r.status_code == 500
        body = r.json()
        assert body["detail"] == "internal server error" and body["code"] == "internal"
        assert len(body["request_id"]) == 32
        assert "secret internal detail" not in r.text and "Traceback" not in r.text
        assert gw.client.get("/healthz").status_code == 200  # still serving


def test_parse_errors_carry_the_status():
    with pytest.raises(InputError, match="exceeds the limit of 4") as info:
        parse_predict_body(json.dumps({"inputs": [[0]] * 5}).encode(), SPEC)
    assert info.value.status == 413
    x = parse_predict_body(json.dumps({"inputs": [[[[0.5] * 8] * 8]]}).encode(), SPEC)
    assert x.shape == (1, 1, 8, 8) and x.dtype.is_floating_point


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=3)
    ),
    max_leaves=30,
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    doc=st.one_of(
        json_values,
        st.fixed_dictionaries({"inputs": json_values}),
        st.fixed_dictionaries({"b64": json_values, "shape": json_values}),
    )
)
def test_no_body_crashes_the_server(gw, doc):
    r = post(gw, json.dumps(doc, allow_nan=True).encode())
    assert 400 <= r.status_code < 500 or r.status_code == 200, r.text
