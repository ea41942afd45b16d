"""HTTP -> request message and response -> JSON (proto3 JSON mapping), without a network."""

from __future__ import annotations

import json
from typing import Any

import pytest
from google.protobuf import timestamp_pb2

from mercato.catalog.v1 import catalog_pb2
from mercato.orders.v1 import orders_pb2
from mercato.type.v1 import money_pb2
from mercato_gateway.app import derive_routes
from mercato_gateway.errors import ApiError
from mercato_gateway.routing import Route
from mercato_gateway.transcode import (
    build_request,
    json_field_path,
    parse_json_body,
    render_response,
)

ROUTES = {r.full_method.split("/")[1]: r for r in derive_routes()}


def build(
    name: str,
    *,
    path: dict[str, str] | None = None,
    query: list[tuple[str, str]] | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> Any:
    return build_request(
        ROUTES[name],
        path_params=path or {},
        query=query or [],
        body=body,
        headers=headers or {},
    )


def refused(name: str, **kwargs: Any) -> ApiError:
    with pytest.raises(ApiError) as caught:
        build(name, **kwargs)
    assert caught.value.http_status == 400
    return caught.value


def test_query_parameters_camel_and_proto_names_enums_and_int64() -> None:
    request = build(
        "ListProducts",
        query=[
            ("category", "kitchen"),
            ("currency_code", "EUR"),
            ("minPriceMinor", "100"),
            ("max_price_minor", "9000000000"),
            ("state", "PRODUCT_STATE_ARCHIVED"),
            ("pageSize", "10"),
        ],
    )
    assert request.category == "kitchen"
    assert request.currency_code == "EUR"
    assert request.HasField("min_price_minor")
    assert request.min_price_minor == 100
    assert request.max_price_minor == 9_000_000_000
    assert request.state == catalog_pb2.PRODUCT_STATE_ARCHIVED
    assert request.page_size == 10
    # Enums by name only: the document lists the names, so a number is refused, naming the field.
    for number in ("2", "0"):
        by_number = refused("ListProducts", query=[("state", number)])
        assert by_number.field_violations[0][0] == "state"
        assert "PRODUCT_STATE_ARCHIVED" in by_number.field_violations[0][1]


def test_query_timestamps_and_refusals() -> None:
    request = build("ListOrders", query=[("createdAfter", "2024-01-01T00:00:00Z")])
    assert request.created_after.seconds == 1704067200
    assert refused("ListProducts", query=[("colour", "red")]).reason == "UNKNOWN_PARAMETER"
    error = refused("ListProducts", query=[("pageSize", "ten")])
    assert error.field_violations == [("pageSize", "must be an integer")]
    assert (
        refused("ListProducts", query=[("pageSize", "1"), ("pageSize", "2")]).field_violations[0][0]
        == "pageSize"
    )
    assert refused("ListProducts", query=[("state", "NOPE")]).field_violations[0][0] == "state"
    assert refused("ListProducts", query=[("pageSize", "99999999999")]).field_violations
    assert refused("ListOrders", query=[("createdAfter", "yesterday")]).field_violations[0][0] == (
        "createdAfter"
    )


def test_path_params_nested_and_body_field() -> None:
    request = build(
        "UpdateProduct",
        path={"product.sku": "SKU-1"},
        query=[("updateMask", "name,categoryId")],
        body={
            "name": "Knife",
            "sku": "OTHER",
            "price": {"currencyCode": "EUR", "amountMinor": "5"},
        },
    )
    assert request.product.sku == "SKU-1"  # the path wins over the body
    assert request.product.name == "Knife"
    assert list(request.update_mask.paths) == ["name", "category_id"]
    assert request.product.price.amount_minor == 5
    # A path-bound field is not a query parameter.
    assert refused("GetProduct", path={"sku": "A"}, query=[("sku", "B")]).field_violations


def test_body_star_and_unknown_fields() -> None:
    request = build("AdjustStock", path={"sku": "SKU-1"}, body={"delta": -3, "reason": "count"})
    assert (request.sku, request.delta, request.reason) == ("SKU-1", -3, "count")
    unknown = refused("AdjustStock", path={"sku": "S"}, body={"delta": 1, "colour": "red"})
    assert unknown.reason == "UNKNOWN_FIELD"
    assert unknown.field_violations == [("colour", "unknown field")]
    nested = refused("CreateProduct", body={"price": {"amount": 1}})
    assert nested.field_violations[0][0] == "product.price.amount"
    wrong = refused("CreateProduct", body={"price": {"amountMinor": "x"}})
    assert wrong.reason == "INVALID_JSON"
    assert wrong.field_violations[0][0] == "product.price.amountMinor"
    assert refused("AdjustStock", body=[1, 2]).message == "the request body must be a JSON object"
    # Query parameters are not accepted with body "*".
    assert refused("AdjustStock", body={}, query=[("delta", "1")]).reason == "UNKNOWN_PARAMETER"
    # A GET takes no body.
    assert refused("GetProduct", path={"sku": "A"}, body={"x": 1}).http_status == 400
    # No body at all on a body route is an empty message.
    empty = build("CancelOrder", path={"id": "o1"})
    assert empty.id == "o1"


def test_idempotency_key_header_is_required() -> None:
    error = refused("CreateOrder", body={"lines": [{"sku": "A1", "quantity": 1}]})
    assert error.reason == "HEADER_MISSING"
    assert error.field_violations[0][0] == "idempotencyKey"
    request = build(
        "CreateOrder",
        body={"lines": [{"sku": "A1", "quantity": 1}]},
        headers={"idempotency-key": "k-1"},
    )
    assert request.idempotency_key == "k-1"
    assert request.order.lines[0].quantity == 1


def test_an_http_body_field_takes_the_raw_body_and_its_media_type() -> None:
    route = ROUTES["RecordPaymentEvent"]
    assert route.raw_body
    assert route.rate_class == "default"  # signed, not a guessable secret: not throttled as login
    payload = b'{"id": "evt_1",  "amount": 1}\n'
    request = build_request(
        route,
        path_params={},
        query=[],
        body=payload,
        headers={"stripe-signature": "t=1,v1=ab"},
        content_type="application/json; charset=utf-8",
    )
    assert request.payload.data == payload  # byte for byte: the signature covers these bytes
    assert request.payload.content_type == "application/json; charset=utf-8"
    assert request.stripe_signature == "t=1,v1=ab"
    error = refused("RecordPaymentEvent", body=payload)
    assert (error.reason, error.field_violations[0][0]) == ("HEADER_MISSING", "stripeSignature")
    assert not ROUTES["PayOrder"].raw_body


def test_json_body_parsing() -> None:
    assert parse_json_body(b'{"a": 1}') == {"a": 1}
    for bad in [b"{", b'{"a": 1, "a": 2}', b"\xff"]:
        with pytest.raises(ApiError) as caught:
            parse_json_body(bad)
        assert caught.value.reason == "MALFORMED_JSON"


def test_field_paths_become_json_paths() -> None:
    descriptor = orders_pb2.CreateOrderRequest.DESCRIPTOR
    assert json_field_path(descriptor, "order.lines[0].unit_price") == "order.lines[0].unitPrice"
    assert json_field_path(descriptor, "idempotency_key") == "idempotencyKey"
    assert json_field_path(descriptor, "unknown.thing") == "unknown.thing"
    products = catalog_pb2.CreateProductRequest.DESCRIPTOR
    assert json_field_path(products, "product.attributes['a_b']") == "product.attributes['a_b']"


def _route(name: str) -> Route:
    return ROUTES[name]


def test_responses_are_proto3_json() -> None:
    response = catalog_pb2.GetProductResponse(
        product=catalog_pb2.Product(
            sku="SKU-1",
            category_id="kitchen",
            price=money_pb2.Money(currency_code="EUR", amount_minor=1999),
            state=catalog_pb2.PRODUCT_STATE_ACTIVE,
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        )
    )
    body = json.loads(render_response(_route("GetProduct"), response))
    assert body == {
        "product": {
            "sku": "SKU-1",
            "categoryId": "kitchen",
            "price": {"currencyCode": "EUR", "amountMinor": "1999"},
            "state": "PRODUCT_STATE_ACTIVE",
            "createTime": "2023-11-14T22:13:20Z",
        }
    }
    from mercato.auth.v1 import auth_pb2

    token = auth_pb2.IssueTokenResponse(access_token="a", token_type="Bearer", expires_in=900)
    assert json.loads(render_response(_route("IssueToken"), token)) == {
        "access_token": "a",
        "token_type": "Bearer",
        "expires_in": 900,
    }


def test_bodies_are_held_to_the_documented_json() -> None:
    """What proto3 JSON parsers also accept but the OpenAPI document calls invalid is a 400
    naming the member: null, enums by number, int64 as numbers, 32-bit integers as strings,
    proto names instead of JSON names, path-bound fields in a body "*"."""
    sku = {"sku": "SKU-1"}

    def violation(name: str, **kwargs: Any) -> tuple[str, str, str]:
        error = refused(name, **kwargs)
        assert len(error.field_violations) == 1, error.field_violations
        field, description = error.field_violations[0]
        return error.reason, field, description

    reason, field, text = violation("DisableUser", path={"id": "u1"}, body={"reason": None})
    assert (reason, field) == ("INVALID_JSON", "reason")
    assert "null" in text
    assert violation("CreateOrder", body={"lines": None}, headers={"idempotency-key": "k"})[1] == (
        "order.lines"
    )
    assert violation("CreateOrder", body={"lines": [None]}, headers={"idempotency-key": "k"})[
        1
    ] == ("order.lines[0]")
    assert violation("CreateProduct", body={"attributes": {"a": None}})[1] == (
        "product.attributes['a']"
    )
    assert violation("CreateProduct", body={"price": None})[1] == "product.price"
    # Enums by name only, in bodies too.
    assert violation(
        "UpdateUser", path={"user.id": "u1"}, query=[("updateMask", "roles")], body={"roles": [2]}
    )[1:] == (
        "user.roles[0]",
        "must be one of ROLE_UNSPECIFIED, ROLE_CUSTOMER, ROLE_ADMIN (by name)",
    )
    # int64 is a decimal string; 32-bit integers are JSON numbers.
    for amount in (5, "+5", "1_0", "\u0665", "5.0", "99999999999999999999"):
        assert violation("CreateProduct", body={"price": {"amountMinor": amount}})[1] == (
            "product.price.amountMinor"
        )
    for delta in ("5", True, 1.5, 2**31):
        assert (
            violation("AdjustStock", path=sku, body={"delta": delta, "reason": "r"})[1] == "delta"
        )
    assert build("AdjustStock", path=sku, body={"delta": 2.0, "reason": "r"}).delta == 2
    assert violation("AdjustStock", path=sku, body={"delta": 1, "reason": 7})[1] == "reason"
    # Members by JSON name only: the proto name is an unknown member, with a hint.
    reason, field, text = violation("CreateProduct", body={"category_id": "knives"})
    assert (reason, field) == ("UNKNOWN_FIELD", "product.category_id")
    assert "categoryId" in text
    # A path-bound field is not part of a body "*".
    reason, field, _ = violation("AdjustStock", path=sku, body={"sku": "X", "delta": 1})
    assert (reason, field) == ("UNKNOWN_FIELD", "sku")
    # Objects where messages are, arrays where lists are; every violation is listed.
    error = refused("CreateProduct", body={"price": "1 EUR", "attributes": [], "name": 3})
    assert {f for f, _ in error.field_violations} == {
        "product.price",
        "product.attributes",
        "product.name",
    }


def test_json_null_and_constants_are_refused() -> None:
    route = ROUTES["CancelOrder"]
    with pytest.raises(ApiError) as caught:
        parse_json_body(b"null", route)
    assert caught.value.field_violations == [("(body)", "must not be null")]
    with pytest.raises(ApiError) as caught:
        parse_json_body(b"null", ROUTES["CreateOrder"])
    assert caught.value.field_violations == [("order", "must not be null")]
    with pytest.raises(ApiError) as caught:
        parse_json_body(b'{"delta": NaN}')
    assert caught.value.reason == "MALFORMED_JSON"


def test_query_booleans_and_enums_by_name() -> None:
    assert build("ListUsers", query=[("role", "ROLE_ADMIN")]).role == 2
    assert refused("ListUsers", query=[("role", "2")]).field_violations[0][0] == "role"
    assert refused("ListUsers", query=[("role", "role_admin")]).field_violations[0][0] == "role"
