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


def test_conditional_get_is_declared_on_every_get() -> None:
    for (method, path), operation in _operations(DOCUMENT).items():
        if not operation["operationId"].split("_")[0].endswith("Service"):
            continue  # the gateway's own health endpoints
        responses = operation["responses"]
        if method == "GET":
            assert responses["304"] == {"$ref": "#/components/responses/NotModified"}, path
            assert responses["200"]["headers"]["ETag"] == {"$ref": "#/components/headers/ETag"}
            header = [p for p in operation["parameters"] if p["in"] == "header"]
            assert [p["name"] for p in header] == ["If-None-Match"], path
            assert header[0]["required"] is False
        else:
            assert "304" not in responses
            assert "ETag" not in responses["200"]["headers"]
    assert DOCUMENT["components"]["headers"]["ETag"]["required"] is True
    not_modified = DOCUMENT["components"]["responses"]["NotModified"]
    assert "content" not in not_modified
    assert set(not_modified["headers"]) == {"ETag", "X-Request-Id"}


def test_schemas_say_what_the_gateway_and_services_refuse() -> None:
    schemas = DOCUMENT["components"]["schemas"]
    # An absent member is the zero value: a currency code must match ^[A-Z]{3}$, so it is
    # required wherever a Money is.
    assert schemas["mercato.type.v1.Money"]["required"] == ["currencyCode"]
    # Enums by name only.
    state = _operations(DOCUMENT)[("GET", "/v1/orders")]["parameters"]
    state_schema = next(p for p in state if p["name"] == "state")["schema"]
    assert state_schema["type"] == "string"
    assert "ORDER_STATE_UNSPECIFIED" in state_schema["enum"]
    assert all(isinstance(name, str) for name in state_schema["enum"])
    # No null anywhere but the wrapper types: a string member is a string.
    adjust = _operations(DOCUMENT)[("POST", "/v1/products/{sku}:adjustStock")]
    body = adjust["requestBody"]["content"]["application/json"]["schema"]["properties"]
    assert body["reason"]["type"] == "string"
    # IGNORE_IF_ZERO_VALUE with a well-known format: empty, or that format.
    assert body["requestId"]["anyOf"] == [{"maxLength": 0}, {"format": "uuid"}]
    # U+0000 is refused in every string: a string without a pattern of its own gets one.
    description = schemas["mercato.catalog.v1.Product"]["properties"]["description"]
    assert description["pattern"] == "^[^\\x00]*$"
    assert re.search(description["pattern"], "a\x00b") is None
    # A UTF-8 byte bound: the character bound it implies, and the bound described.
    register = _operations(DOCUMENT)[("POST", "/v1/users")]
    password = register["requestBody"]["content"]["application/json"]["schema"]["properties"][
        "password"
    ]
    assert password["maxLength"] == 1024
    assert "at most 1024 bytes in UTF-8" in password["description"]


def test_a_raw_body_operation_takes_any_json_and_documents_its_signature_header() -> None:
    operation = _operations(DOCUMENT)[("POST", "/v1/payments/events")]
    assert operation["requestBody"] == {
        "required": True,
        "content": {"application/json": {"schema": {}}},
    }
    headers = [p for p in operation["parameters"] if p["in"] == "header"]
    assert [(p["name"], p["required"]) for p in headers] == [("Stripe-Signature", True)]
    assert operation["security"] == []
