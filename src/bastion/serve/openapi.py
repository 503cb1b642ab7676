"""The gateway's OpenAPI document: FastAPI's, with the predict body typed by the served
model's input spec (:mod:`bastion.serve.body_schema`).

The spec is known once the model is loaded (the app's lifespan); until then the document
carries the generic body (:class:`~bastion.serve.routes_predict.PredictRequest`) and is
not cached.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from bastion.serve.body_schema import BODY, predict_body_schemas

PREDICT_PATH = "/v1/predict"


def build_openapi(app: FastAPI) -> dict[str, Any]:
    """The document ``GET /openapi.json`` serves (cached once the input spec is known)."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title,
        version=app.version,
        openapi_version=app.openapi_version,
        description=app.description,
        routes=app.routes,
    )
    spec = getattr(app.state, "input_spec", None)
    if spec is None:
        return doc
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(predict_body_schemas(spec))
    body = doc["paths"][PREDICT_PATH]["post"]["requestBody"]
    body["content"] = {"application/json": {"schema": {"$ref": f"#/components/schemas/{BODY}"}}}
    schemas.pop("PredictRequest", None)
    app.openapi_schema = doc
    return doc


def install_openapi(app: FastAPI) -> None:
    """Serve :func:`build_openapi` as the app's document."""

    def openapi() -> dict[str, Any]:
        return build_openapi(app)

    app.openapi = openapi  # type: ignore[method-assign]
