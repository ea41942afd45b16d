"""Route derivation from the descriptors, path templates and matching."""

from __future__ import annotations

import pytest
from google.api import annotations_pb2

from mercato_common.identity import Audience
from mercato_gateway.app import derive_routes
from mercato_gateway.routing import (
    RouteError,
    Router,
    load_contract_modules,
    parse_template,
)


def _annotated_rpcs() -> set[tuple[str, str, str]]:
    """Every (HTTP method, template, RPC) annotated in the generated contracts, read directly."""
    found: set[tuple[str, str, str]] = set()
    for module in load_contract_modules():
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                options = method.GetOptions()
                if not options.HasExtension(annotations_pb2.http):
                    continue
                rules = [options.Extensions[annotations_pb2.http]]
                rules.extend(rules[0].additional_bindings)
                for rule in rules:
                    kind = rule.WhichOneof("pattern")
                    template = rule.custom.path if kind == "custom" else getattr(rule, kind)
                    verb = rule.custom.kind.upper() if kind == "custom" else kind.upper()
                    found.add((verb, template, f"{service.full_name}/{method.name}"))
    return found


def test_every_annotated_rpc_is_routed_and_nothing_else() -> None:
    routes = derive_routes()
    routed = {(r.http_method, r.template, r.full_method) for r in routes}
    assert routed == _annotated_rpcs()
    assert len(routed) == len(routes)
    # The public API, at least.
    for expected in [
        ("POST", "/v1/users"),
        ("GET", "/v1/users/me"),
        ("POST", "/v1/auth/login"),
        ("POST", "/oauth2/token"),
        ("POST", "/oauth2/revoke"),
        ("GET", "/.well-known/jwks.json"),
        ("GET", "/.well-known/openid-configuration"),
        ("GET", "/v1/users"),
        ("PATCH", "/v1/users/{user.id}"),
        ("GET", "/v1/products"),
        ("GET", "/v1/products/{sku}"),
        ("GET", "/v1/categories"),
        ("POST", "/v1/products"),
        ("PATCH", "/v1/products/{product.sku}"),
        ("DELETE", "/v1/products/{sku}"),
        ("POST", "/v1/products/{sku}:adjustStock"),
        ("POST", "/v1/categories"),
        ("POST", "/v1/orders"),
        ("GET", "/v1/orders"),
        ("GET", "/v1/orders/{id}"),
        ("POST", "/v1/orders/{id}:pay"),
        ("POST", "/v1/orders/{id}:cancel"),
        ("POST", "/v1/orders/{id}:fulfill"),
        ("GET", "/v1/analytics/sales"),
        ("GET", "/v1/analytics/top-products"),
        ("GET", "/v1/analytics/funnel"),
        ("GET", "/v1/analytics/freshness"),
    ]:
        assert expected in {(m, t) for m, t, _ in routed}, expected
    # Internal RPCs have no annotation and no route.
    assert not any("ReserveStock" in r.full_method for r in routes)
    assert not any("RotateSigningKey" in r.full_method for r in routes)


def test_access_comes_from_the_option() -> None:
    by_method = {r.full_method: r for r in derive_routes()}
    assert by_method["mercato.auth.v1.AuthService/Login"].access.audience is Audience.PUBLIC
    current = by_method["mercato.auth.v1.AuthService/GetCurrentUser"]
    assert current.access.audience is Audience.AUTHENTICATED
    adjust = by_method["mercato.catalog.v1.CatalogService/AdjustStock"]
    assert adjust.access.audience is Audience.SCOPED
    assert adjust.access.scopes == frozenset({"catalog:write"})
    assert by_method["mercato.auth.v1.AuthService/IssueToken"].form_encoded
    assert by_method["mercato.auth.v1.AuthService/RevokeToken"].form_encoded
    assert by_method["mercato.auth.v1.AuthService/Login"].rate_class == "strict"
    assert by_method["mercato.catalog.v1.CatalogService/GetProduct"].rate_class == "default"
    create = by_method["mercato.orders.v1.OrdersService/CreateOrder"]
    assert create.header_fields == (("idempotency_key", "idempotency-key", True),)
    assert create.service_key == "orders"
    assert by_method["mercato.catalog.v1.CatalogService/GetProduct"].is_read


def test_matching_literals_variables_verbs_and_nested_fields() -> None:
    router = Router(derive_routes())

    def match(method: str, path: str) -> tuple[str, dict[str, str]] | None:
        found = router.match(method, path)
        return None if found is None else (found.route.method.name, found.path_params)

    assert match("GET", "/v1/users/me") == ("GetCurrentUser", {})
    assert match("GET", "/v1/users/abc") == ("GetUser", {"id": "abc"})
    assert match("PATCH", "/v1/users/u1") == ("UpdateUser", {"user.id": "u1"})
    assert match("PATCH", "/v1/products/SKU-1") == ("UpdateProduct", {"product.sku": "SKU-1"})
    assert match("POST", "/v1/products/SKU-1:adjustStock") == ("AdjustStock", {"sku": "SKU-1"})
    assert match("POST", "/v1/orders/o1:pay") == ("PayOrder", {"id": "o1"})
    assert match("POST", "/v1/orders/o1:cancel") == ("CancelOrder", {"id": "o1"})
    assert match("POST", "/v1/orders/o1:ship") is None
    assert match("GET", "/v1/products/A%2FB") == ("GetProduct", {"sku": "A/B"})
    assert match("GET", "/v1/products/") is None
    assert match("GET", "/v1/products/a/b") is None
    assert match("PUT", "/v1/products/X") is None
    assert router.allowed_methods("/v1/products/X") == ["DELETE", "GET", "PATCH"]
    assert router.allowed_methods("/nowhere") == []


def test_a_custom_verb_is_never_swallowed_by_a_plain_variable() -> None:
    router = Router(derive_routes())
    # UpdateProduct/GetProduct/DeleteProduct bind {sku}; the suffix is AdjustStock's verb.
    for method in ("GET", "PATCH", "DELETE", "PUT"):
        assert router.match(method, "/v1/products/X:adjustStock") is None, method
    assert router.match("GET", "/v1/orders/o1:pay") is None
    # 405 lists exactly what the path accepts, custom-verb paths included.
    assert router.allowed_methods("/v1/products/X:adjustStock") == ["POST"]
    for verb in ("pay", "cancel", "fulfill"):
        assert router.allowed_methods(f"/v1/orders/o1:{verb}") == ["POST"], verb
    assert router.allowed_methods("/v1/orders/o1") == ["GET"]
    # The most specific template owns its path, as in OpenAPI: /v1/users/me is GET only.
    assert router.allowed_methods("/v1/users/me") == ["GET"]
    assert router.match("PATCH", "/v1/users/me") is None
    # A value ending in such a suffix is still reachable, colon percent-encoded.
    found = router.match("GET", "/v1/products/X%3AadjustStock")
    assert found is not None
    assert (found.route.method.name, found.path_params) == ("GetProduct", {"sku": "X:adjustStock"})
    # An unknown suffix is part of the value, as before.
    found = router.match("GET", "/v1/products/X:other")
    assert found is not None
    assert found.path_params == {"sku": "X:other"}


def test_parse_template_forms() -> None:
    parsed = parse_template("/v1/{name=shelves/*/books/*}:publish")
    assert parsed.verb == "publish"
    assert parsed.variables == ("name",)
    assert [s.kind for s in parsed.segments] == [
        "literal",
        "literal",
        "single",
        "literal",
        "single",
    ]
    rest = parse_template("/v1/files/{path=**}")
    assert rest.has_multi
    router_template = parse_template("/v1/*/x")
    assert router_template.variables == ()
    for bad in ["v1/x", "/v1/{a", "/v1/**/x", "/v1/{a=b/{c}}", "/v1/x:"]:
        with pytest.raises(RouteError):
            parse_template(bad)
