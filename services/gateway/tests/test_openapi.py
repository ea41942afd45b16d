"""The OpenAPI 3.1 document: valid, and the same routes as the router."""

from __future__ import annotations

import re
from typing import Any

from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from mercato_common.identity import Audience
from mercato_gateway.app import derive_routes
from mercato_gateway.openapi import ERROR_STATUSES, build_openapi, docs_page, openapi_path

ROUTES = derive_routes()
DOCUMENT = build_openapi(ROUTES, version="1.2.3")
METHODS = {"get", "post", "put", "patch", "delete"}


def test_document_is_valid_openapi_3_1() -> None:
    assert DOCUMENT["openapi"] == "3.1.0"
    validate(DOCUMENT, cls=OpenAPIV31SpecValidator)


def _operations(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        (method.upper(), path): operation
        for path, item in document["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def test_operations_match_the_routes() -> None:
    operations = _operations(DOCUMENT)
    routed = {(r.http_method, openapi_path(r.template)): r for r in ROUTES}
    gateway_own = {("GET", "/healthz"), ("GET", "/readyz"), ("GET", "/status")}
    assert set(operations) == set(routed) | gateway_own
    for key, route in routed.items():
        operation = operations[key]
        assert operation["operationId"] == route.operation_id
        assert operation["x-grpc-method"] == route.full_method
        declared = {p["name"] for p in operation.get("parameters", ()) if p["in"] == "path"}
        assert declared == set(re.findall(r"\{([^}]+)\}", key[1]))
        for status in ("200", *ERROR_STATUSES):
            assert status in operation["responses"], (key, status)
        if route.access.audience is Audience.PUBLIC and not route.form_encoded:
            assert operation["security"] == []
        elif route.access.audience is Audience.SCOPED:
            assert operation["security"] == [{"bearerAuth": sorted(route.access.scopes)}]
        elif route.access.audience is Audience.AUTHENTICATED:
            assert operation["security"] == [{"bearerAuth": []}]


def test_schemas_follow_the_messages_and_rules() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    product = schemas["mercato.catalog.v1.Product"]
    assert product["additionalProperties"] is False
    props = product["properties"]
    assert props["categoryId"]["type"] == "string"
    assert props["sku"]["pattern"] == "^$|^[A-Z0-9][A-Z0-9-]{1,63}$"
    assert props["state"]["readOnly"] is True
    assert props["createTime"]["readOnly"] is True
    assert props["attributes"]["type"] == "object"
    assert props["attributes"]["maxProperties"] == 50
    money = schemas["mercato.type.v1.Money"]["properties"]
    assert money["amountMinor"] == {"type": "string", "format": "int64", "pattern": "^-?[0-9]+$"}
    list_users = _operations(DOCUMENT)[("GET", "/v1/users")]
    params = {p["name"]: p for p in list_users["parameters"]}
    assert params["pageSize"]["schema"]["maximum"] == 100
    assert params["role"]["schema"]["enum"][0] == "ROLE_UNSPECIFIED"
    create_order = _operations(DOCUMENT)[("POST", "/v1/orders")]
    header = [p for p in create_order["parameters"] if p["in"] == "header"]
    assert header == [
        {
            "name": "Idempotency-Key",
            "in": "header",
            "required": True,
            "schema": {"type": "string", "pattern": "^[!-~]{1,255}$"},
            "description": "Sets the request field `idempotencyKey`.",
        }
    ]
    token = _operations(DOCUMENT)[("POST", "/oauth2/token")]
    assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]
    assert token["responses"]["400"]["$ref"].endswith("OAuthError400")
    update = _operations(DOCUMENT)[("PATCH", "/v1/products/{product_sku}")]
    path_param = next(p for p in update["parameters"] if p["in"] == "path")
    assert path_param["x-field-path"] == "product.sku"
    assert update["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/mercato.catalog.v1.Product"
    }
    error = schemas["Error"]["properties"]["error"]["properties"]
    assert {"code", "status", "message", "reason", "domain", "fieldViolations"} <= set(error)


def test_docs_page_lists_every_operation_without_scripts() -> None:
    page = docs_page(DOCUMENT)
    for route in ROUTES:
        assert openapi_path(route.template) in page
    assert "<script" not in page
