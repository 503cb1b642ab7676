"""The OpenAPI document describes every answer: each route has a typed success schema and
documents its 4xx bodies, and real answers (successes and errors) match what it documents."""

from __future__ import annotations

import importlib
import pkgutil
from datetime import datetime
from typing import Any

from fastapi.routing import APIRoute

from tests.serve.conftest import marked

PUBLIC = {("get", "/healthz"), ("get", "/metrics")}
TYPES = {
    "object": dict,
    "array": list,
    "string": str,
    "integer": int,
    "number": (int, float),
    "boolean": bool,
    "null": type(None),
}


def _resolve(spec: dict, schema: dict) -> dict:
    while "$ref" in schema:
        name = schema["$ref"].removeprefix("#/components/schemas/")
        schema = spec["components"]["schemas"][name]
    return schema


def problems(spec: dict, schema: dict, value: Any, where: str = "$") -> list[str]:
    """Why ``value`` does not match ``schema`` (the subset of JSON Schema FastAPI emits)."""
    schema = _resolve(spec, schema)
    if "anyOf" in schema:
        options = [problems(spec, s, value, where) for s in schema["anyOf"]]
        return [] if any(not p for p in options) else [f"{where}: matches no anyOf option"]
    out: list[str] = []
    kind = schema.get("type")
    if kind is not None:
        expected = TYPES[kind]
        if not isinstance(value, expected) or (kind in ("integer", "number") and value is True):
            return [f"{where}: {value!r} is not {kind}"]
    if "enum" in schema and value not in schema["enum"]:
        out.append(f"{where}: {value!r} not in {schema['enum']}")
    if "const" in schema and value != schema["const"]:
        out.append(f"{where}: {value!r} != {schema['const']!r}")
    if schema.get("format") == "date-time" and isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            out.append(f"{where}: {value!r} is not a date-time")
    if isinstance(value, dict):
        props = schema.get("properties", {})
        out += [f"{where}: missing {k!r}" for k in schema.get("required", []) if k not in value]
        for k, v in value.items():
            if k in props:
                out += problems(spec, props[k], v, f"{where}.{k}")
            elif isinstance(schema.get("additionalProperties"), dict):
                out += problems(spec, schema["additionalProperties"], v, f"{where}.{k}")
            elif props and schema.get("additionalProperties") is not True:
                out.append(f"{where}: undocumented field {k!r}")
    if isinstance(value, list) and "items" in schema:
        for i, v in enumerate(value):
            out += problems(spec, schema["items"], v, f"{where}[{i}]")
    return out


def _operations(spec: dict):
    for path, item in spec["paths"].items():
        for method, op in item.items():
            yield method, path, op


def _json_schema(response: dict) -> dict | None:
    return response.get("content", {}).get("application/json", {}).get("schema")


def test_every_route_declares_a_response_model():
    import bastion.serve

    names = [m.name for m in pkgutil.iter_modules(bastion.serve.__path__)]
    modules = [
        importlib.import_module(f"bastion.serve.{n}") for n in names if n.startswith("routes_")
    ]
    assert len(modules) >= 5
    routes = [r for m in modules for r in m.router.routes if isinstance(r, APIRoute)]
    assert len(routes) >= 20
    for route in routes:
        if route.path == "/metrics":
            continue  # Prometheus text, documented as such
        assert route.response_model is not None, route.path
        if route.path != "/healthz":  # public and always 200
            assert route.responses, route.path


def test_openapi_documents_every_answer(gw):
    spec = gw.client.get("/openapi.json").json()
    ops = list(_operations(spec))
    assert len(ops) >= 20
    for method, path, op in ops:
        where = f"{method.upper()} {path}"
        codes = op["responses"]
        ok = [c for c in codes if c in ("200", "201", "202")]
        assert ok, f"{where}: no success response"
        for code in ok:
            content = codes[code].get("content", {})
            assert content, f"{where} {code}: no body schema"
            if (method, path) == ("get", "/metrics"):
                assert "text/plain" in next(iter(content))
                continue
            schema = _resolve(spec, content["application/json"]["schema"])
            if schema.get("type") == "array":
                schema = _resolve(spec, schema["items"])
            # a typed record, not an open dict
            assert schema.get("properties") or schema.get("anyOf"), f"{where} {code}: untyped"
        errors = [c for c in codes if c.startswith("4")]
        if (method, path) in PUBLIC:
            continue
        assert {"401", "403"} <= set(errors), f"{where}: 401/403 not documented"
        for code in errors:  # one error schema for every 4xx
            schema = _json_schema(codes[code])
            assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, f"{where} {code}"
    for method, path, op in ops:  # FastAPI's own 422 model is never left in the document
        assert "HTTPValidationError" not in str(op), f"{method} {path}"
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    error = spec["components"]["schemas"]["ErrorResponse"]
    assert {"detail", "code", "errors", "request_id", "blocked_until"} <= set(error["properties"])
    predict = spec["paths"]["/v1/predict"]["post"]["responses"]
    assert {"202", "400", "401", "403", "413", "415", "422", "429"} <= set(predict)
    for path in ("/v1/clients/{client_id}/block", "/v1/clients/blocked"):
        assert path in spec["paths"], path
    block_ops = spec["paths"]["/v1/clients/{client_id}/block"]
    assert {"get", "put", "delete"} <= set(block_ops)
    assert "404" in block_ops["get"]["responses"] and "404" in block_ops["delete"]["responses"]


def test_real_answers_match_the_documented_schemas(gw, scripted, sample):
    spec = gw.client.get("/openapi.json").json()
    c = gw.client
    admin, reviewer, client = gw.auth("admin"), gw.auth("reviewer"), gw.auth()
    held = c.post("/v1/predict", json={"inputs": [marked(sample, 0.25)]}, headers=client)
    ticket = held.json()["ticket"]
    calls = [
        ("post", "/v1/predict", "/v1/predict", held),
        (
            "post",
            "/v1/predict",
            "/v1/predict",
            c.post("/v1/predict", json={"inputs": [sample]}, headers=client),
        ),
        (
            "post",
            "/v1/predict",
            "/v1/predict",
            c.post(
                "/v1/predict", content=b"{", headers={**client, "content-type": "application/json"}
            ),
        ),
        (
            "post",
            "/v1/predict",
            "/v1/predict",
            c.post("/v1/predict", content=b"x", headers={**client, "content-type": "text/plain"}),
        ),
        (
            "post",
            "/v1/predict",
            "/v1/predict",
            c.post("/v1/predict", json={"inputs": [[1]]}, headers=client),
        ),
        (
            "post",
            "/v1/predict",
            "/v1/predict",
            c.post("/v1/predict", json={"inputs": [sample]}, headers=reviewer),
        ),
        ("get", "/v1/tickets/{ticket}", "tickets", c.get(f"/v1/tickets/{ticket}", headers=client)),
        ("get", "/v1/tickets/{ticket}", "tickets", c.get("/v1/tickets/nope", headers=client)),
        ("get", "/v1/reviews", "reviews", c.get("/v1/reviews", headers=reviewer)),
        ("get", "/v1/reviews", "reviews", c.get("/v1/reviews?limit=0", headers=reviewer)),
        ("get", "/v1/reviews", "reviews", c.get("/v1/reviews")),
        ("get", "/v1/reviews/{ticket}", "review", c.get(f"/v1/reviews/{ticket}", headers=reviewer)),
        (
            "post",
            "/v1/reviews/{ticket}/approve",
            "approve",
            c.post(f"/v1/reviews/{ticket}/approve", headers=reviewer),
        ),
        (
            "post",
            "/v1/reviews/{ticket}/reject",
            "reject twice",
            c.post(f"/v1/reviews/{ticket}/reject", headers=reviewer),
        ),
        ("get", "/v1/tickets/{ticket}", "approved", c.get(f"/v1/tickets/{ticket}", headers=client)),
        ("get", "/v1/audit/entries", "entries", c.get("/v1/audit/entries", headers=reviewer)),
        ("get", "/v1/audit/tree-head", "head", c.get("/v1/audit/tree-head", headers=reviewer)),
        ("post", "/v1/audit/tree-head", "sign", c.post("/v1/audit/tree-head", headers=admin)),
        (
            "get",
            "/v1/audit/proof/inclusion",
            "incl",
            c.get("/v1/audit/proof/inclusion?index=0", headers=reviewer),
        ),
        (
            "get",
            "/v1/audit/proof/inclusion",
            "incl 422",
            c.get("/v1/audit/proof/inclusion?index=99", headers=reviewer),
        ),
        (
            "get",
            "/v1/audit/proof/consistency",
            "cons",
            c.get("/v1/audit/proof/consistency?first=1", headers=reviewer),
        ),
        ("get", "/v1/audit/verify", "verify", c.get("/v1/audit/verify", headers=admin)),
        ("get", "/healthz", "health", c.get("/healthz")),
        ("get", "/v1/decisions", "decisions", c.get("/v1/decisions", headers=reviewer)),
        ("get", "/v1/guard/drift", "drift", c.get("/v1/guard/drift", headers=reviewer)),
        ("get", "/v1/keys", "keys", c.get("/v1/keys", headers=admin)),
        ("post", "/v1/keys", "new key", c.post("/v1/keys", json={"role": "client"}, headers=admin)),
        ("post", "/v1/keys", "bad role", c.post("/v1/keys", json={"role": "x"}, headers=admin)),
        (
            "post",
            "/v1/keys/{key_id}/revoke",
            "revoke 404",
            c.post("/v1/keys/999/revoke", headers=admin),
        ),
        (
            "put",
            "/v1/clients/{client_id}/block",
            "block",
            c.put(f"/v1/clients/{gw.ids['client']}/block", json={"reason": "r"}, headers=admin),
        ),
        (
            "post",
            "/v1/predict",
            "blocked",
            c.post("/v1/predict", json={"inputs": [sample]}, headers=client),
        ),
        ("get", "/v1/clients/blocked", "blocked list", c.get("/v1/clients/blocked", headers=admin)),
        (
            "get",
            "/v1/clients/{client_id}/block",
            "block view",
            c.get(f"/v1/clients/{gw.ids['client']}/block", headers=admin),
        ),
        (
            "delete",
            "/v1/clients/{client_id}/block",
            "unblock",
            c.delete(f"/v1/clients/{gw.ids['client']}/block", headers=admin),
        ),
        (
            "delete",
            "/v1/clients/{client_id}/block",
            "unblock 404",
            c.delete(f"/v1/clients/{gw.ids['client']}/block", headers=admin),
        ),
        (
            "get",
            "/v1/clients/{client_id}/block",
            "not an id",
            c.get("/v1/clients/abc/block", headers=admin),
        ),
    ]
    seen: set[int] = set()
    for method, path, label, r in calls:
        responses = spec["paths"][path][method]["responses"]
        code = str(r.status_code)
        assert code in responses, f"{label}: {method} {path} answered undocumented {code}"
        schema = _json_schema(responses[code])
        assert schema is not None, f"{label}: {code} has no JSON schema"
        bad = problems(spec, schema, r.json())
        assert not bad, f"{label} ({code}): {bad}\n{r.text[:500]}"
        seen.add(r.status_code)
    assert {200, 201, 202, 400, 401, 403, 404, 409, 415, 422} <= seen
    # the checker itself catches a body that is not what the document says
    ok_schema = _json_schema(spec["paths"]["/v1/predict"]["post"]["responses"]["200"])
    good = calls[1][3].json()
    assert not problems(spec, ok_schema, good)
    assert problems(spec, ok_schema, {**good, "predictions": ["3"]})
    assert problems(spec, ok_schema, {k: v for k, v in good.items() if k != "request_id"})
    assert problems(spec, ok_schema, {**good, "scores": [1.0]})
