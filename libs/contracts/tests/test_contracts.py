"""Checks of the contracts themselves, on the generated descriptors.

These hold the rules of docs/contracts.md: every RPC declares who may call it, the public
REST routes are exactly the annotated ones, reads and idempotent writes are marked for the
retry policy, enums start with *_UNSPECIFIED, no floating point anywhere, and the
protovalidate rules reject bad input.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator
from typing import Any

import protovalidate
import pytest
from buf.validate import validate_pb2
from google.api import annotations_pb2, field_behavior_pb2
from google.protobuf import any_pb2, descriptor, descriptor_pb2, field_mask_pb2, timestamp_pb2
from google.protobuf.message import Message

import mercato
from mercato.analytics.v1 import analytics_pb2
from mercato.api.v1 import access_pb2
from mercato.auth.v1 import auth_pb2
from mercato.catalog.v1 import catalog_pb2
from mercato.events.v1 import envelope_pb2
from mercato.orders.events.v1 import events_pb2 as order_events_pb2
from mercato.orders.v1 import orders_pb2
from mercato.type.v1 import money_pb2

SCOPES = {
    "catalog:read",
    "catalog:write",
    "catalog:reserve",
    "orders:read",
    "orders:write",
    "orders:fulfill",
    "orders:admin",
    "analytics:read",
    "users:admin",
}

# The public REST API: RPC -> (HTTP method, path template, body). Every other RPC is internal.
ROUTES = {
    "mercato.auth.v1.AuthService.RegisterUser": ("post", "/v1/users", "*"),
    "mercato.auth.v1.AuthService.GetCurrentUser": ("get", "/v1/users/me", ""),
    "mercato.auth.v1.AuthService.GetUser": ("get", "/v1/users/{id}", ""),
    "mercato.auth.v1.AuthService.ListUsers": ("get", "/v1/users", ""),
    "mercato.auth.v1.AuthService.UpdateUser": ("patch", "/v1/users/{user.id}", "user"),
    "mercato.auth.v1.AuthService.DisableUser": ("post", "/v1/users/{id}:disable", "*"),
    "mercato.auth.v1.AuthService.Login": ("post", "/v1/auth/login", "*"),
    "mercato.auth.v1.AuthService.IssueToken": ("post", "/oauth2/token", "*"),
    "mercato.auth.v1.AuthService.RevokeToken": ("post", "/oauth2/revoke", "*"),
    "mercato.auth.v1.AuthService.GetJwks": ("get", "/.well-known/jwks.json", ""),
    "mercato.auth.v1.AuthService.GetOpenIdConfiguration": (
        "get",
        "/.well-known/openid-configuration",
        "",
    ),
    "mercato.catalog.v1.CatalogService.GetProduct": ("get", "/v1/products/{sku}", ""),
    "mercato.catalog.v1.CatalogService.ListProducts": ("get", "/v1/products", ""),
    "mercato.catalog.v1.CatalogService.CreateProduct": ("post", "/v1/products", "product"),
    "mercato.catalog.v1.CatalogService.UpdateProduct": (
        "patch",
        "/v1/products/{product.sku}",
        "product",
    ),
    "mercato.catalog.v1.CatalogService.ArchiveProduct": ("delete", "/v1/products/{sku}", ""),
    "mercato.catalog.v1.CatalogService.AdjustStock": (
        "post",
        "/v1/products/{sku}:adjustStock",
        "*",
    ),
    "mercato.catalog.v1.CatalogService.ListCategories": ("get", "/v1/categories", ""),
    "mercato.catalog.v1.CatalogService.CreateCategory": ("post", "/v1/categories", "category"),
    "mercato.orders.v1.OrdersService.CreateOrder": ("post", "/v1/orders", "order"),
    "mercato.orders.v1.OrdersService.GetOrder": ("get", "/v1/orders/{id}", ""),
    "mercato.orders.v1.OrdersService.ListOrders": ("get", "/v1/orders", ""),
    "mercato.orders.v1.OrdersService.PayOrder": ("post", "/v1/orders/{id}:pay", "*"),
    "mercato.orders.v1.OrdersService.CancelOrder": ("post", "/v1/orders/{id}:cancel", "*"),
    "mercato.orders.v1.OrdersService.FulfillOrder": ("post", "/v1/orders/{id}:fulfill", "*"),
    # The payment provider's webhook: the raw body (google.api.HttpBody), signed.
    "mercato.orders.v1.OrdersService.RecordPaymentEvent": (
        "post",
        "/v1/payments/events",
        "payload",
    ),
    "mercato.analytics.v1.AnalyticsService.GetSalesSummary": ("get", "/v1/analytics/sales", ""),
    "mercato.analytics.v1.AnalyticsService.ListTopProducts": (
        "get",
        "/v1/analytics/top-products",
        "",
    ),
    "mercato.analytics.v1.AnalyticsService.GetFunnel": ("get", "/v1/analytics/funnel", ""),
    "mercato.analytics.v1.AnalyticsService.GetFreshness": ("get", "/v1/analytics/freshness", ""),
}

# The routes issue 8 names, path variables written as {}.
ISSUE_8_ROUTES = {
    ("post", "/v1/users"),
    ("get", "/v1/users/me"),
    ("post", "/v1/auth/login"),
    ("post", "/oauth2/token"),
    ("post", "/oauth2/revoke"),
    ("get", "/.well-known/jwks.json"),
    ("get", "/.well-known/openid-configuration"),
    ("get", "/v1/users"),
    ("patch", "/v1/users/{}"),
    ("get", "/v1/products"),
    ("get", "/v1/products/{}"),
    ("get", "/v1/categories"),
    ("post", "/v1/products"),
    ("patch", "/v1/products/{}"),
    ("delete", "/v1/products/{}"),
    ("post", "/v1/products/{}:adjustStock"),
    ("post", "/v1/categories"),
    ("post", "/v1/orders"),
    ("get", "/v1/orders"),
    ("get", "/v1/orders/{}"),
    ("post", "/v1/orders/{}:pay"),
    ("post", "/v1/orders/{}:cancel"),
    ("post", "/v1/orders/{}:fulfill"),
    ("get", "/v1/analytics/sales"),
    ("get", "/v1/analytics/top-products"),
    ("get", "/v1/analytics/funnel"),
    ("get", "/v1/analytics/freshness"),
}

# Idempotent by design (retried by the client channel); reads are NO_SIDE_EFFECTS.
IDEMPOTENT = {
    "mercato.auth.v1.AuthService.UpdateUser",
    "mercato.auth.v1.AuthService.DisableUser",
    "mercato.auth.v1.AuthService.RevokeToken",
    "mercato.catalog.v1.CatalogService.ArchiveProduct",
    "mercato.catalog.v1.CatalogService.ReserveStock",
    "mercato.catalog.v1.CatalogService.ReleaseStock",
    "mercato.catalog.v1.CatalogService.CommitReservation",
    "mercato.orders.v1.OrdersService.CreateOrder",
    "mercato.orders.v1.OrdersService.CancelOrder",
    "mercato.orders.v1.OrdersService.FulfillOrder",
    "mercato.orders.v1.OrdersService.RecordPaymentEvent",
}

EVENTS = {
    "mercato.auth.events.v1": {"UserRegistered", "UserRolesChanged", "UserDisabled"},
    "mercato.catalog.events.v1": {
        "ProductCreated",
        "ProductUpdated",
        "ProductArchived",
        "StockReserved",
        "StockReleased",
        "StockCommitted",
        "StockAdjusted",
        "StockLow",
    },
    "mercato.orders.events.v1": {
        "OrderPlaced",
        "OrderPaid",
        "OrderCancelled",
        "OrderFulfilled",
        "OrderFailed",
    },
}

UUID = "3fa85f64-5717-4562-b3fc-2c963f66afa6"


def _files() -> list[descriptor.FileDescriptor]:
    files = []
    for info in pkgutil.walk_packages(mercato.__path__, "mercato."):
        if info.name.endswith("_pb2"):
            module = importlib.import_module(info.name)
            files.append(module.DESCRIPTOR)
    return sorted(files, key=lambda f: f.name)


FILES = _files()


def _methods() -> Iterator[descriptor.MethodDescriptor]:
    for file in FILES:
        for service in file.services_by_name.values():
            yield from service.methods


def _messages() -> Iterator[descriptor.Descriptor]:
    def walk(message: descriptor.Descriptor) -> Iterator[descriptor.Descriptor]:
        yield message
        for nested in message.nested_types:
            yield from walk(nested)

    for file in FILES:
        for message in file.message_types_by_name.values():
            yield from walk(message)


def _enums() -> Iterator[descriptor.EnumDescriptor]:
    for file in FILES:
        yield from file.enum_types_by_name.values()
    for message in _messages():
        yield from message.enum_types


def _options(desc: Any) -> Any:
    return desc.GetOptions()


def _access(method: descriptor.MethodDescriptor) -> access_pb2.AccessRule:
    rule: access_pb2.AccessRule = _options(method).Extensions[access_pb2.access]
    return rule


def test_every_package_is_generated() -> None:
    packages = {f.package for f in FILES}
    assert {
        "mercato.api.v1",
        "mercato.type.v1",
        "mercato.events.v1",
        "mercato.auth.v1",
        "mercato.catalog.v1",
        "mercato.orders.v1",
        "mercato.analytics.v1",
        *EVENTS,
    } <= packages


def test_every_rpc_declares_its_access() -> None:
    methods = list(_methods())
    assert len(methods) > 30
    for method in methods:
        assert _options(method).HasExtension(access_pb2.access), method.full_name
        rule = _access(method)
        assert rule.audience != access_pb2.AUDIENCE_UNSPECIFIED, method.full_name
        if rule.audience == access_pb2.AUDIENCE_SCOPED:
            assert rule.scopes, method.full_name
            assert set(rule.scopes) <= SCOPES, method.full_name
        else:
            assert not rule.scopes, method.full_name


def test_public_routes_are_exactly_the_annotated_rpcs() -> None:
    found = {}
    for method in _methods():
        if _options(method).HasExtension(annotations_pb2.http):
            http = _options(method).Extensions[annotations_pb2.http]
            verb = http.WhichOneof("pattern")
            assert not http.additional_bindings, method.full_name
            found[method.full_name] = (verb, getattr(http, verb), http.body)
    assert found == ROUTES


def test_issue_8_routes_exist() -> None:
    def normalise(path: str) -> str:
        out, depth = [], 0
        for char in path:
            if char == "{":
                depth += 1
                if depth == 1:
                    out.append("{}")
            elif char == "}":
                depth -= 1
            elif depth == 0:
                out.append(char)
        return "".join(out)

    routes = {(verb, normalise(path)) for verb, path, _ in ROUTES.values()}
    assert routes >= ISSUE_8_ROUTES


def test_internal_rpcs_are_service_or_operator_only() -> None:
    for method in _methods():
        if method.full_name in ROUTES:
            continue
        rule = _access(method)
        assert rule.audience == access_pb2.AUDIENCE_SCOPED, method.full_name
        assert set(rule.scopes) & {"catalog:reserve", "users:admin"}, method.full_name


def test_idempotency_levels() -> None:
    options = descriptor_pb2.MethodOptions
    for method in _methods():
        level = _options(method).idempotency_level
        name = method.name
        if name.startswith(("Get", "List", "BatchGet")):
            assert level == options.NO_SIDE_EFFECTS, method.full_name
        elif method.full_name in IDEMPOTENT:
            assert level == options.IDEMPOTENT, method.full_name
        else:
            assert level == options.IDEMPOTENCY_UNKNOWN, method.full_name


def test_enum_zero_values_are_unspecified() -> None:
    enums = list(_enums())
    assert enums
    for enum in enums:
        zero = enum.values_by_number[0]
        assert zero.name.endswith("_UNSPECIFIED"), enum.full_name


def test_no_floating_point_fields() -> None:
    floating = {descriptor.FieldDescriptor.TYPE_FLOAT, descriptor.FieldDescriptor.TYPE_DOUBLE}
    for message in _messages():
        for field in message.fields:
            assert field.type not in floating, field.full_name


def test_required_fields_are_validated() -> None:
    for message in _messages():
        for field in message.fields:
            behaviors = _options(field).Extensions[field_behavior_pb2.field_behavior]
            if field_behavior_pb2.REQUIRED in behaviors:
                rules = _options(field).Extensions[validate_pb2.field]
                assert rules.required, field.full_name


def test_events_exist_and_fit_the_envelope() -> None:
    for package, names in EVENTS.items():
        file = next(f for f in FILES if f.package == package)
        assert set(file.message_types_by_name) >= names

    placed = order_events_pb2.OrderPlaced(
        order_id=UUID,
        user_id=UUID,
        total=money_pb2.Money(currency_code="EUR", amount_minor=1998),
    )
    placed.lines.add(sku="MUG-1", quantity=2).unit_price.CopyFrom(
        money_pb2.Money(currency_code="EUR", amount_minor=999)
    )
    data = any_pb2.Any()
    data.Pack(placed)
    envelope = envelope_pb2.Envelope(
        id=UUID,
        type=placed.DESCRIPTOR.full_name,
        source="orders",
        time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        subject=UUID,
        schema_version=1,
        data=data,
    )
    protovalidate.validate(envelope)
    decoded = envelope_pb2.Envelope.FromString(envelope.SerializeToString())
    assert decoded.data.TypeName() == decoded.type
    back = order_events_pb2.OrderPlaced()
    assert decoded.data.Unpack(back)
    assert back == placed


def _mask(*paths: str) -> field_mask_pb2.FieldMask:
    return field_mask_pb2.FieldMask(paths=list(paths))


def _ts(seconds: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=seconds)


VALID: list[Message] = [
    auth_pb2.RegisterUserRequest(
        email="ann@example.com", display_name="Ann", password="correct horse battery"
    ),
    auth_pb2.UpdateUserRequest(
        user=auth_pb2.User(id=UUID, roles=[auth_pb2.ROLE_ADMIN]), update_mask=_mask("roles")
    ),
    auth_pb2.IssueTokenRequest(
        grant_type="client_credentials", client_id="orders", client_secret="s"
    ),
    catalog_pb2.CreateProductRequest(
        product=catalog_pb2.Product(
            sku="MUG-1",
            name="Mug",
            price=money_pb2.Money(currency_code="EUR", amount_minor=999),
            attributes={"colour": "blue"},
        )
    ),
    catalog_pb2.ListProductsRequest(
        q='{"$gt": ""}', currency_code="EUR", min_price_minor=0, max_price_minor=100
    ),
    catalog_pb2.ReserveStockRequest(
        order_id=UUID, lines=[catalog_pb2.ReservationLine(sku="MUG-1", quantity=3)]
    ),
    orders_pb2.CreateOrderRequest(
        order=orders_pb2.Order(lines=[orders_pb2.OrderLine(sku="MUG-1", quantity=2)]),
        idempotency_key="0b7e8c1a-key",
    ),
    orders_pb2.ListOrdersRequest(user_id="-"),
    analytics_pb2.GetSalesSummaryRequest(
        start_time=_ts(0), end_time=_ts(3600), bucket=analytics_pb2.BUCKET_MINUTE
    ),
]

INVALID: list[tuple[Message, str]] = [
    (
        auth_pb2.RegisterUserRequest(email="not-an-email", display_name="Ann", password="x" * 12),
        "string.email",
    ),
    (
        auth_pb2.RegisterUserRequest(email="ann@example.com", display_name="Ann", password="short"),
        "string.min_len",
    ),
    (
        auth_pb2.UpdateUserRequest(user=auth_pb2.User(id=UUID), update_mask=_mask("email")),
        "field_mask.in",
    ),
    (
        auth_pb2.UpdateUserRequest(user=auth_pb2.User(id=UUID), update_mask=_mask("roles")),
        "update_user.roles_not_empty",
    ),
    (auth_pb2.IssueTokenRequest(grant_type="refresh_token"), "issue_token.refresh_token_required"),
    (catalog_pb2.GetProductRequest(sku="mug 1"), "string.pattern"),
    (
        catalog_pb2.CreateProductRequest(
            product=catalog_pb2.Product(
                sku="MUG-1", name="Mug", price=money_pb2.Money(currency_code="eur", amount_minor=1)
            )
        ),
        "string.pattern",
    ),
    (
        catalog_pb2.CreateProductRequest(
            product=catalog_pb2.Product(
                sku="MUG-1", name="Mug", price=money_pb2.Money(currency_code="EUR", amount_minor=-1)
            )
        ),
        "price.range",
    ),
    (catalog_pb2.ListProductsRequest(page_size=101), "int32.gte_lte"),
    (catalog_pb2.ListProductsRequest(min_price_minor=5), "list_products.price_range_currency"),
    (
        catalog_pb2.UpdateProductRequest(
            product=catalog_pb2.Product(sku="MUG-1"), update_mask=_mask("price.amount_minor")
        ),
        "update_mask.top_level",
    ),
    (
        catalog_pb2.ReserveStockRequest(
            order_id=UUID,
            lines=[
                catalog_pb2.ReservationLine(sku="MUG-1", quantity=1),
                catalog_pb2.ReservationLine(sku="MUG-1", quantity=2),
            ],
        ),
        "lines.distinct_skus",
    ),
    (catalog_pb2.ReserveStockRequest(order_id="42", lines=[]), "string.uuid"),
    (
        orders_pb2.CreateOrderRequest(
            order=orders_pb2.Order(lines=[orders_pb2.OrderLine(sku="MUG-1", quantity=1001)]),
            idempotency_key="k",
        ),
        "int32.gte_lte",
    ),
    (
        orders_pb2.CreateOrderRequest(
            order=orders_pb2.Order(lines=[orders_pb2.OrderLine(sku="MUG-1", quantity=1)])
        ),
        "required",
    ),
    (orders_pb2.ListOrdersRequest(user_id="me"), "string.pattern"),
    (
        analytics_pb2.GetSalesSummaryRequest(
            start_time=_ts(0), end_time=_ts(2 * 86400), bucket=analytics_pb2.BUCKET_MINUTE
        ),
        "sales_summary.range_size",
    ),
    (
        analytics_pb2.ListTopProductsRequest(
            start_time=_ts(0), end_time=_ts(60), rank_by=analytics_pb2.RANK_BY_REVENUE
        ),
        "top_products.revenue_currency",
    ),
]


@pytest.mark.parametrize("message", VALID, ids=lambda m: type(m).__name__)
def test_validation_accepts_good_input(message: Message) -> None:
    protovalidate.validate(message)


@pytest.mark.parametrize(
    ("message", "rule_id"), INVALID, ids=lambda v: v if isinstance(v, str) else type(v).__name__
)
def test_validation_rejects_bad_input(message: Message, rule_id: str) -> None:
    with pytest.raises(protovalidate.ValidationError) as caught:
        protovalidate.validate(message)
    assert rule_id in {v.proto.rule_id for v in caught.value.violations}
