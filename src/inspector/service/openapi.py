"""The OpenAPI schema as the service really behaves, so that clients generated from it, and a schema-driven
fuzzer, meet no surprise.

FastAPI's generated schema is adjusted in four ways:
- every error answer has the service's one shape, `{"detail": "..."}` (also 422: see `validation_error`), and
  400 (a malformed body, several models and none named) is documented on every operation;
- without API keys (loopback only) no security scheme is declared: a client is not told to send a key that
  nothing checks;
- OpenAPI links tie the answers that create things (an inspection, a loaded model, a re-fit job) to the
  operations that take their ids, so a client (or a stateful test) can follow them;
- 405 answers list in `Allow` the methods the schema documents for the path (`allowed_methods`), not just one
  route's (or the web page's static files', which match every path).
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi

METHODS = ("get", "put", "post", "delete", "patch")
ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
# The answer that creates an id, and the path parameter that takes it: (method, path, JSON pointer, parameter).
LINK_SOURCES = (
    ("post", "/v1/inspect", "/id", "record_id"),
    ("post", "/v1/models", "/name", "name"),
    ("post", "/v1/models/{name}/refit", "/id", "job_id"),
)


def service_openapi(app: FastAPI, keys: bool) -> dict[str, Any]:
    """The schema, built once and cached on the app (FastAPI's own convention)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        _one_error_shape(schema)
        if not keys:
            _without_security(schema)
        _add_links(schema)
        app.openapi_schema = schema
    return app.openapi_schema


def _operations(schema: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (path, method, operation)
        for path, item in schema.get("paths", {}).items()
        for method, operation in item.items()
        if method in METHODS
    ]


def _one_error_shape(schema: dict[str, Any]) -> None:
    for _, _, operation in _operations(schema):
        responses = operation.setdefault("responses", {})
        if "422" in responses:
            responses["422"] = {
                "description": "a parameter or body field that is missing or invalid (the message names it)",
                "content": {"application/json": {"schema": ERROR_REF}},
            }
        responses.setdefault(
            "400",
            {
                "description": "a malformed request: unreadable body, or several models served and none named",
                "content": {"application/json": {"schema": ERROR_REF}},
            },
        )
    components = schema.get("components", {}).get("schemas", {})
    components.pop("HTTPValidationError", None)
    components.pop("ValidationError", None)


def _without_security(schema: dict[str, Any]) -> None:
    schema.get("components", {}).pop("securitySchemes", None)
    for _, _, operation in _operations(schema):
        operation.pop("security", None)
        for code in ("401", "403"):
            operation.get("responses", {}).pop(code, None)


def _add_links(schema: dict[str, Any]) -> None:
    """From each creating answer to every operation whose only path parameter takes what it created."""
    paths = schema.get("paths", {})
    for method, source, pointer, parameter in LINK_SOURCES:
        operation = paths.get(source, {}).get(method)
        if operation is None:
            continue
        links = {
            target.get("operationId", f"{target_method} {path}"): {
                "operationRef": "#/paths/" + path.replace("~", "~0").replace("/", "~1") + f"/{target_method}",
                "parameters": {parameter: f"$response.body#{pointer}"},
            }
            for path, target_method, target in _operations(schema)
            if re.findall(r"{(\w+)}", path) == [parameter]
        }
        for code, response in operation.get("responses", {}).items():
            if code.startswith("2") and links:
                response["links"] = links


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """The methods the schema documents for this request path (the `Allow` header of a 405). A literal path
    (`/v1/models/reload`) answers for itself even where a template (`/v1/models/{name}`) also matches."""
    paths = app.openapi().get("paths", {})
    if path in paths:
        return sorted(m.upper() for m in paths[path] if m in METHODS)
    methods = {
        m.upper()
        for template, item in paths.items()
        if re.fullmatch(re.sub(r"{\w+}", "[^/]+", template), path)
        for m in item
        if m in METHODS
    }
    return sorted(methods)


def validation_message(exc: RequestValidationError) -> str:
    """FastAPI's list of validation errors as one line naming each field: `query.part_id: String should ...`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in error.get('loc', ()))}: {error.get('msg', 'invalid')}" for error in exc.errors()
    )
