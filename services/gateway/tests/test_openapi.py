"""The OpenAPI 3.1 document: valid, and the same routes as the router."""

from __future__ import annotations

import re
from typing import Any

from openapi_spec_validator import validate
from openapi_spec_validator.validation import OpenAPIV31SpecValidator

from mercato_common.identity import Audience
from mercato_gateway.app import derive_routes
from mercato_gateway.openapi import (
    ERROR_STATUSES,
    build_openapi,
    docs_page,
    document_path,
)

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
    routed = {(r.http_method, document_path(ROUTES, r)): r for r in ROUTES}
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
            "schema": {"type": "string", "pattern": "^[!-~]{1,255}$", "minLength": 1},
            "description": "Sets the request field `idempotencyKey`.",
        }
    ]
    token = _operations(DOCUMENT)[("POST", "/oauth2/token")]
    assert "application/x-www-form-urlencoded" in token["requestBody"]["content"]
    assert token["responses"]["400"]["$ref"].endswith("OAuthError400")
    update = _operations(DOCUMENT)[("PATCH", "/v1/products/{sku}")]
    path_param = next(p for p in update["parameters"] if p["in"] == "path")
    assert path_param["x-field-path"] == "product.sku"
    update_body = update["requestBody"]["content"]["application/json"]["schema"]
    assert update_body["allOf"][0] == {"$ref": "#/components/schemas/mercato.catalog.v1.Product"}
    # CEL this.sku != '' holds through the path: the body need not repeat the sku.
    assert not any("required" in part for part in update_body["allOf"])
    assert path_param["name"] == "sku"  # one OpenAPI path with GET/DELETE /v1/products/{sku}
    # protovalidate rules: required (buf), CEL presence rules, field mask paths, CEL named.
    login = _operations(DOCUMENT)[("POST", "/v1/auth/login")]
    login_body = login["requestBody"]["content"]["application/json"]["schema"]
    assert "email" in login_body["required"]
    create = _operations(DOCUMENT)[("POST", "/v1/products")]["requestBody"]
    product_body = create["content"]["application/json"]["schema"]
    assert {"required": ["sku", "name", "price"]} in product_body["allOf"]
    assert "product.sku is required" in product_body["description"]
    mask = next(p for p in update["parameters"] if p["name"] == "updateMask")["schema"]
    assert re.fullmatch(mask["pattern"], "name,categoryId")
    assert not re.fullmatch(mask["pattern"], "")
    assert not re.fullmatch(mask["pattern"], "sku")
    sales = _operations(DOCUMENT)[("GET", "/v1/analytics/sales")]
    assert not any(p.get("required") for p in sales["parameters"])  # documented defaults
    funnel_request = schemas.get("mercato.analytics.v1.GetFunnelRequest")
    assert funnel_request is None or "start_time must be before end_time" in str(funnel_request)
    error = schemas["Error"]["properties"]["error"]["properties"]
    assert {"code", "status", "message", "reason", "domain", "fieldViolations"} <= set(error)


def test_docs_page_lists_every_operation_without_scripts() -> None:
    page = docs_page(DOCUMENT)
    for route in ROUTES:
        assert document_path(ROUTES, route) in page
    assert "<script" not in page
