"""End-to-end flows over HTTP through the gateway: accounts and OAuth, catalog, orders, edges."""

from __future__ import annotations

import base64
import json
import uuid

import httpx
import pytest
from prometheus_client import generate_latest

from mercato_gateway.app import GatewayApp

from .conftest import ORDER_ID, SERVICE_SECRET, SLOW_ORDER_ID, Suite

pytestmark = pytest.mark.integration

FORM = {"content-type": "application/x-www-form-urlencoded"}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def test_register_login_refresh_revoke_in_rfc_form(client: httpx.AsyncClient) -> None:
    email = f"ann-{uuid.uuid4().hex[:8]}@example.com"
    registered = await client.post(
        "/v1/users",
        json={"email": email, "displayName": "Ann", "password": "a long enough password"},
    )
    assert registered.status_code == 200, registered.text
    user = registered.json()["user"]
    assert user["email"] == email
    assert user["roles"] == ["ROLE_CUSTOMER"]
    assert user["state"] == "USER_STATE_ACTIVE"
    assert "password" not in registered.text

    again = await client.post(
        "/v1/users",
        json={"email": email, "displayName": "Ann", "password": "a long enough password"},
    )
    assert again.status_code == 409
    assert again.json()["error"]["reason"] == "EMAIL_TAKEN"
    assert again.json()["error"]["domain"] == "auth.mercato"

    bad = await client.post("/v1/auth/login", json={"email": email, "password": "wrong one"})
    assert bad.status_code == 401
    assert bad.json()["error"]["reason"] == "INVALID_CREDENTIALS"
    assert bad.headers["www-authenticate"].startswith("Bearer ")

    login = await client.post(
        "/v1/auth/login", json={"email": email, "password": "a long enough password"}
    )
    assert login.status_code == 200, login.text
    tokens = login.json()
    assert set(tokens) == {"access_token", "token_type", "expires_in", "refresh_token", "scope"}
    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 900

    me = await client.get("/v1/users/me", headers=bearer(tokens["access_token"]))
    assert me.status_code == 200
    assert me.json()["user"]["id"] == user["id"]

    refreshed = await client.post(
        "/oauth2/token",
        content=f"grant_type=refresh_token&refresh_token={tokens['refresh_token']}&extra=ignored",
        headers=FORM,
    )
    assert refreshed.status_code == 200, refreshed.text
    assert refreshed.headers["cache-control"] == "no-store"
    assert refreshed.headers["pragma"] == "no-cache"
    new = refreshed.json()
    assert new["refresh_token"] != tokens["refresh_token"]
    assert new["token_type"] == "Bearer"

    reused = await client.post(
        "/oauth2/token",
        content=f"grant_type=refresh_token&refresh_token={tokens['refresh_token']}",
        headers=FORM,
    )
    assert reused.status_code == 400
    assert reused.json()["error"] == "invalid_grant"
    assert "error_description" in reused.json()
    assert reused.headers["cache-control"] == "no-store"

    login = await client.post(
        "/v1/auth/login", json={"email": email, "password": "a long enough password"}
    )
    refresh = login.json()["refresh_token"]
    revoked = await client.post("/oauth2/revoke", content=f"token={refresh}", headers=FORM)
    assert revoked.status_code == 200, revoked.text
    after = await client.post(
        "/oauth2/token", content=f"grant_type=refresh_token&refresh_token={refresh}", headers=FORM
    )
    assert after.status_code == 400
    assert after.json()["error"] == "invalid_grant"


async def test_client_credentials_and_oauth_errors(client: httpx.AsyncClient) -> None:
    basic = base64.b64encode(f"orders:{SERVICE_SECRET}".encode()).decode()
    issued = await client.post(
        "/oauth2/token",
        content="grant_type=client_credentials",
        headers={**FORM, "authorization": f"Basic {basic}"},
    )
    assert issued.status_code == 200, issued.text
    body = issued.json()
    assert body["scope"] == "catalog:reserve"
    assert "refresh_token" not in body  # client credentials get none; empty members are omitted

    wrong = base64.b64encode(b"orders:not-the-secret-at-all").decode()
    refused = await client.post(
        "/oauth2/token",
        content="grant_type=client_credentials",
        headers={**FORM, "authorization": f"Basic {wrong}"},
    )
    assert refused.status_code == 401
    assert refused.json()["error"] == "invalid_client"
    assert refused.headers["www-authenticate"].startswith("Basic ")

    unsupported = await client.post("/oauth2/token", content="grant_type=password", headers=FORM)
    assert unsupported.status_code == 400
    assert unsupported.json()["error"] == "unsupported_grant_type"

    missing = await client.post("/oauth2/token", content="", headers=FORM)
    assert missing.status_code == 400
    assert missing.json()["error"] == "invalid_request"
    assert "grant_type" in missing.json()["error_description"]

    repeated = await client.post("/oauth2/token", content="grant_type=a&grant_type=b", headers=FORM)
    assert repeated.status_code == 400
    assert repeated.json()["error"] == "invalid_request"

    as_json = await client.post("/oauth2/token", json={"grant_type": "client_credentials"})
    assert as_json.status_code == 415
    assert as_json.json()["error"] == "invalid_request"


async def test_login_throttling_maps_to_429_with_retry_after(suite: Suite) -> None:
    app = await suite.gateway()
    async with suite.client(app) as http:
        email = f"throttled-{uuid.uuid4().hex[:8]}@example.com"
        statuses = []
        for _ in range(4):
            response = await http.post(
                "/v1/auth/login", json={"email": email, "password": "wrong password"}
            )
            statuses.append(response.status_code)
        assert statuses[0] == 401
        assert statuses[-1] == 429
        assert int(response.headers["retry-after"]) >= 1
        error = response.json()["error"]
        assert error["reason"] == "LOGIN_THROTTLED"
        assert error["retryAfterSeconds"] == int(response.headers["retry-after"])


async def test_catalog_over_http(suite: Suite, client: httpx.AsyncClient) -> None:
    admin = bearer(suite.tokens.admin)
    slug = f"cat-{uuid.uuid4().hex[:6]}"
    sku = f"GW-{uuid.uuid4().hex[:8].upper()}"
    created_category = await client.post(
        "/v1/categories", json={"id": slug, "displayName": "Kitchen"}, headers=admin
    )
    assert created_category.status_code == 200, created_category.text

    product = {
        "sku": sku,
        "name": "Knife",
        "categoryId": slug,
        "price": {"currencyCode": "EUR", "amountMinor": "1999"},
        "attributes": {"colour": "red"},
    }
    created = await client.post("/v1/products", json=product, headers=admin)
    assert created.status_code == 200, created.text
    body = created.json()["product"]
    assert body["price"] == {"currencyCode": "EUR", "amountMinor": "1999"}  # int64 as string
    assert body["state"] == "PRODUCT_STATE_ACTIVE"  # enums by name

    duplicate = await client.post("/v1/products", json=product, headers=admin)
    assert duplicate.status_code == 409
    assert duplicate.json()["error"]["reason"] == "SKU_TAKEN"

    got = await client.get(f"/v1/products/{sku}", headers=bearer(suite.tokens.customer))
    assert got.status_code == 200
    assert got.json()["product"]["sku"] == sku

    missing = await client.get("/v1/products/NOPE-404", headers=admin)
    assert missing.status_code == 404
    assert missing.json()["error"]["reason"] == "PRODUCT_NOT_FOUND"

    listed = await client.get(
        "/v1/products",
        params={"category": slug, "currency_code": "EUR", "minPriceMinor": "1000", "pageSize": "5"},
        headers=admin,
    )
    assert listed.status_code == 200, listed.text
    assert [p["sku"] for p in listed.json()["products"]] == [sku]

    by_state = await client.get(
        "/v1/products", params={"category": slug, "state": "PRODUCT_STATE_ARCHIVED"}, headers=admin
    )
    assert by_state.status_code == 200
    assert by_state.json().get("products", []) == []

    bad_range = await client.get(
        "/v1/products", params={"minPriceMinor": "1000"}, headers=admin
    )  # protovalidate CEL rule: currency required with a price bound
    assert bad_range.status_code == 400

    updated = await client.patch(
        f"/v1/products/{sku}",
        params={"updateMask": "name,price"},
        json={"name": "Chef knife", "price": {"currencyCode": "EUR", "amountMinor": "2499"}},
        headers=admin,
    )
    assert updated.status_code == 200, updated.text
    assert updated.json()["product"]["name"] == "Chef knife"

    adjusted = await client.post(
        f"/v1/products/{sku}:adjustStock", json={"delta": 5, "reason": "received"}, headers=admin
    )
    assert adjusted.status_code == 200, adjusted.text
    assert adjusted.json()["product"]["stockOnHand"] == 5

    too_many = await client.post(
        f"/v1/products/{sku}:adjustStock", json={"delta": -50, "reason": "count"}, headers=admin
    )
    assert too_many.status_code in (400, 409), too_many.text

    invalid = await client.post(
        "/v1/products",
        json={
            "sku": "lower-case",
            "name": "x",
            "price": {"currencyCode": "EUR", "amountMinor": "1"},
        },
        headers=admin,
    )
    assert invalid.status_code == 400
    assert "product.sku" in [v["field"] for v in invalid.json()["error"]["fieldViolations"]]

    archived = await client.delete(f"/v1/products/{sku}", headers=admin)
    assert archived.status_code == 200
    assert archived.json()["product"]["state"] == "PRODUCT_STATE_ARCHIVED"

    categories = await client.get("/v1/categories", headers=admin)
    assert slug in [c["id"] for c in categories.json()["categories"]]


async def test_malformed_requests_are_refused_before_any_service(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    admin = {**bearer(suite.tokens.admin), "content-type": "application/json"}
    cases = [
        (b"{not json", 400, "MALFORMED_JSON", None),
        # A body of whitespace alone is there but not JSON (no body at all means no fields).
        (b" ", 400, "MALFORMED_JSON", None),
        (b"\r\n", 400, "MALFORMED_JSON", None),
        (b'{"sku": "A1", "sku": "A2"}', 400, "MALFORMED_JSON", None),
        (b'{"sku": "ABC", "colour": "red"}', 400, "UNKNOWN_FIELD", "product.colour"),
        (
            b'{"sku": "ABC", "price": {"amountMinor": "x"}}',
            400,
            "INVALID_JSON",
            "product.price.amountMinor",
        ),
        (b'{"sku": 12, "price": {"currencyCode": ["EUR"]}}', 400, "INVALID_JSON", None),
        (b'{"state": "NOT_A_STATE"}', 400, "INVALID_JSON", "product.state"),
        (b"[1, 2]", 400, "INVALID_JSON", None),
    ]
    for body, status, reason, field in cases:
        response = await client.post("/v1/products", content=body, headers=admin)
        assert response.status_code == status, (body, response.text)
        error = response.json()["error"]
        assert error["reason"] == reason, (body, error)
        if field:
            assert field in [v["field"] for v in error["fieldViolations"]], (body, error)

    wrong_type = await client.post(
        "/v1/products", content=b"sku=ABC", headers={**admin, "content-type": "text/plain"}
    )
    assert wrong_type.status_code == 415

    big = await client.post("/v1/products", content=b"{" + b" " * 2_000_000 + b"}", headers=admin)
    assert big.status_code == 413
    assert big.json()["error"]["reason"] == "BODY_TOO_LARGE"

    unknown_param = await client.get("/v1/products", params={"colour": "red"}, headers=admin)
    assert unknown_param.status_code == 400
    assert unknown_param.json()["error"]["fieldViolations"][0]["field"] == "colour"


async def test_payment_events_pass_the_raw_body_and_signature_to_orders(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    # A provider's webhook: no token, any media type, the body passed on byte for byte.
    unsigned = await client.post("/v1/payments/events", content=b'{"id": "evt_1"}')
    assert unsigned.status_code == 400
    error = unsigned.json()["error"]
    assert error["reason"] == "HEADER_MISSING"
    assert error["fieldViolations"][0]["field"] == "stripeSignature"

    suite.orders.seen.clear()
    body = b'{"id": "evt_1",\n  "type": "payment_intent.succeeded"}  '
    signed = await client.post(
        "/v1/payments/events",
        content=body,
        headers={
            "content-type": "application/json; charset=utf-8",
            "stripe-signature": "t=1,v1=00",
        },
    )
    assert signed.status_code == 200, signed.text
    assert signed.json() == {"orderId": ORDER_ID}
    name, request, metadata = suite.orders.seen[-1]
    assert name == "RecordPaymentEvent"
    assert request.payload.data == body  # byte for byte: the signature covers these bytes
    assert request.payload.content_type == "application/json; charset=utf-8"
    assert request.stripe_signature == "t=1,v1=00"
    assert "authorization" not in metadata
    # Not JSON at all, any media type: passed on all the same (the provider's check refuses it).
    other = await client.post(
        "/v1/payments/events",
        content=b"\x00\xff",
        headers={"content-type": "text/plain", "stripe-signature": "t=1,v1=00"},
    )
    assert other.status_code == 200
    assert suite.orders.seen[-1][1].payload.data == b"\x00\xff"


async def test_405_allows_exactly_the_path_methods_and_verbs_stay_theirs(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    admin = {**bearer(suite.tokens.admin), "content-type": "application/json"}
    # Not UpdateProduct with sku "SKU-1:adjustStock": the path is AdjustStock's, POST only.
    patched = await client.patch("/v1/products/SKU-1:adjustStock", json={}, headers=admin)
    assert patched.status_code == 405, patched.text
    assert patched.headers["allow"] == "POST"
    assert patched.json()["error"]["reason"] == "METHOD_NOT_ALLOWED"
    for verb in ("pay", "cancel", "fulfill"):
        got = await client.get(f"/v1/orders/{ORDER_ID}:{verb}", headers=admin)
        assert got.status_code == 405, (verb, got.text)
        assert got.headers["allow"] == "POST", verb
    put = await client.put("/v1/products/SKU-1", json={}, headers=admin)
    assert put.status_code == 405
    assert put.headers["allow"] == "DELETE, GET, PATCH"


async def test_orders_idempotency_key_and_forwarded_context(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    customer = bearer(suite.tokens.customer)
    order = {"lines": [{"sku": "SKU-1", "quantity": 2}]}
    missing = await client.post("/v1/orders", json=order, headers=customer)
    assert missing.status_code == 400
    assert missing.json()["error"]["fieldViolations"][0]["field"] == "idempotencyKey"

    suite.orders.seen.clear()
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    placed = await client.post(
        "/v1/orders",
        json=order,
        headers={
            **customer,
            "idempotency-key": "key-123",
            "x-request-id": "req-42",
            "traceparent": traceparent,
            "x-forwarded-for": "203.0.113.99",  # not trusted (no proxy hops configured)
        },
    )
    assert placed.status_code == 200, placed.text
    assert placed.headers["x-request-id"] == "req-42"
    assert placed.json()["order"]["total"] == {"currencyCode": "EUR", "amountMinor": "3998"}
    name, request, metadata = suite.orders.seen[-1]
    assert name == "CreateOrder"
    assert request.idempotency_key == "key-123"
    assert [(line.sku, line.quantity) for line in request.order.lines] == [("SKU-1", 2)]
    assert metadata["authorization"] == f"Bearer {suite.tokens.customer}"
    assert metadata["x-forwarded-for"] == "198.51.100.7"
    assert metadata["x-request-id"] == "req-42"
    assert metadata["traceparent"].split("-")[1] == trace_id

    generated = await client.get(f"/v1/orders/{ORDER_ID}", headers=customer)
    assert generated.status_code == 200
    assert len(generated.headers["x-request-id"]) == 32

    paid = await client.post(
        f"/v1/orders/{ORDER_ID}:pay",
        json={
            "paymentToken": "tok_test_ok",
            "amount": {"currencyCode": "EUR", "amountMinor": "3998"},
        },
        headers=customer,
    )
    assert paid.status_code == 200, paid.text
    assert suite.orders.seen[-1][1].payment_token == "tok_test_ok"

    unknown = await client.post(f"/v1/orders/{uuid.uuid4()}:cancel", headers=customer)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["reason"] == "ORDER_NOT_FOUND"

    listed = await client.get(
        "/v1/orders",
        params={"state": "ORDER_STATE_PAID", "createdAfter": "2024-01-01T00:00:00Z"},
        headers=customer,
    )
    assert listed.status_code == 200, listed.text
    request = suite.orders.seen[-1][1]
    assert request.state == 3
    assert request.created_after.seconds == 1704067200


async def test_deadline_maps_to_504(suite: Suite) -> None:
    app = await suite.gateway(
        deadline_overrides=json.dumps({"mercato.orders.v1.OrdersService/GetOrder": 0.3})
    )
    async with suite.client(app) as http:
        response = await http.get(
            f"/v1/orders/{SLOW_ORDER_ID}", headers=bearer(suite.tokens.customer)
        )
    assert response.status_code == 504
    assert response.json()["error"]["status"] == "DEADLINE_EXCEEDED"


async def test_analytics_query_parameters(suite: Suite, client: httpx.AsyncClient) -> None:
    response = await client.get(
        "/v1/analytics/sales",
        params={
            "startTime": "2026-01-01T00:00:00Z",
            "endTime": "2026-01-02T00:00:00Z",
            "bucket": "BUCKET_HOUR",
        },
        headers=bearer(suite.tokens.admin),
    )
    assert response.status_code == 200, response.text
    assert response.json()["total"]["ordersPlaced"] == "3"


async def test_health_readiness_metrics_openapi_docs(
    suite: Suite, gateway: GatewayApp, client: httpx.AsyncClient
) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    ready = await client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"gateway": "ok", "redis": "ok"}
    status = await client.get("/status")
    assert status.status_code == 200, status.text
    assert status.json() == {
        "status": "ok",
        "upstreams": {
            "auth": "SERVING",
            "catalog": "SERVING",
            "orders": "SERVING",
            "analytics": "SERVING",
        },
    }
    await client.get("/v1/products/ABC-1", headers=bearer(suite.tokens.admin))
    # Metrics are on the metrics port only (the registry here), never on the public one.
    hidden = await client.get("/metrics")
    assert hidden.status_code == 404
    assert hidden.json()["error"]["reason"] == "ROUTE_NOT_FOUND"
    metrics = generate_latest(gateway.registry).decode()
    assert 'http_server_requests_total{method="GET",route="/v1/products/{sku}",status="404"}' in (
        metrics
    )
    assert "http_server_request_duration_seconds_bucket" in metrics
    assert "gateway_rate_limit_decisions_total" in metrics
    document = (await client.get("/openapi.json")).json()
    assert document["openapi"] == "3.1.0"
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "/v1/products/{sku}:adjustStock" in docs.text
    assert "script" not in docs.text.lower()

    # The fixed paths answer GET and HEAD only; anything else is the API's 405.
    head = await client.head("/healthz")
    assert (head.status_code, head.content) == (200, b"")
    posted = await client.post("/healthz")
    assert posted.status_code == 405
    assert posted.headers["allow"] == "GET, HEAD"
    assert posted.json()["error"]["reason"] == "METHOD_NOT_ALLOWED"
    assert posted.headers["vary"] == "Origin"  # no Origin: not through CORS, still marked

    # One sick upstream: reported, but the gateway stays ready (its other routes still serve).
    down = await suite.gateway(analytics_target="127.0.0.1:1", readiness_timeout_seconds=0.3)
    async with suite.client(down) as http:
        assert (await http.get("/readyz")).status_code == 200
        degraded = await http.get("/status")
        assert degraded.status_code == 503
        assert degraded.json()["upstreams"]["analytics"] == "NOT_SERVING"
        assert degraded.json()["upstreams"]["catalog"] == "SERVING"
        metrics = generate_latest(down.registry).decode()
        assert 'gateway_upstream_up{upstream="analytics"} 0.0' in metrics
        assert 'gateway_upstream_up{upstream="catalog"} 1.0' in metrics


async def test_cors_preflight_and_headers(suite: Suite) -> None:
    app = await suite.gateway(cors_allow_origins="https://shop.example")
    async with suite.client(app) as http:
        preflight = await http.options(
            "/v1/products",
            headers={
                "origin": "https://shop.example",
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, idempotency-key",
            },
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == "https://shop.example"
        other = await http.options(
            "/v1/products",
            headers={"origin": "https://evil.example", "access-control-request-method": "POST"},
        )
        assert other.status_code == 400
        simple = await http.get("/healthz", headers={"origin": "https://shop.example"})
        assert simple.headers["access-control-allow-origin"] == "https://shop.example"
        assert "x-request-id" in simple.headers["access-control-expose-headers"].lower()
        assert simple.headers["x-content-type-options"] == "nosniff"


async def test_conditional_get_of_a_product(suite: Suite, client: httpx.AsyncClient) -> None:
    """ETag and If-None-Match through the gateway and the real catalog: 304 without content
    while nothing changed; a stock movement (which leaves the product's own field etag alone)
    and an update each give a new ETag, and the old one no longer matches."""
    admin = bearer(suite.tokens.admin)
    sku = f"GW-{uuid.uuid4().hex[:8].upper()}"
    product = {"sku": sku, "name": "Pan", "price": {"currencyCode": "EUR", "amountMinor": "990"}}
    created = await client.post("/v1/products", json=product, headers=admin)
    assert created.status_code == 200, created.text

    first = await client.get(f"/v1/products/{sku}", headers=admin)
    assert first.status_code == 200
    tag = first.headers["etag"]
    assert tag.startswith('W/"')

    for condition in (tag, tag.removeprefix("W/"), f'"other", {tag}', "*"):
        same = await client.get(
            f"/v1/products/{sku}", headers={**admin, "if-none-match": condition}
        )
        assert same.status_code == 304, condition
        assert same.content == b""
        assert same.headers["etag"] == tag
        assert "content-length" not in same.headers
        assert "content-type" not in same.headers
        assert same.headers["cache-control"] == "no-store"
        assert same.headers["x-request-id"]
    other = await client.get(f"/v1/products/{sku}", headers={**admin, "if-none-match": '"nope"'})
    assert other.status_code == 200
    assert other.headers["etag"] == tag

    stocked = await client.post(
        f"/v1/products/{sku}:adjustStock", json={"delta": 3, "reason": "received"}, headers=admin
    )
    assert stocked.status_code == 200, stocked.text
    after_stock = await client.get(f"/v1/products/{sku}", headers={**admin, "if-none-match": tag})
    assert after_stock.status_code == 200
    assert after_stock.json()["product"]["stockOnHand"] == 3
    assert after_stock.json()["product"]["etag"] == first.json()["product"]["etag"]
    stock_tag = after_stock.headers["etag"]
    assert stock_tag != tag

    updated = await client.patch(
        f"/v1/products/{sku}",
        params={"updateMask": "name"},
        json={"name": "Big pan"},
        headers=admin,
    )
    assert updated.status_code == 200, updated.text
    after_update = await client.get(
        f"/v1/products/{sku}", headers={**admin, "if-none-match": f"{tag}, {stock_tag}"}
    )
    assert after_update.status_code == 200
    assert after_update.headers["etag"] not in (tag, stock_tag)

    # The condition never hides an error: no such product is 404, whatever If-None-Match says.
    missing = await client.get("/v1/products/NOPE-404", headers={**admin, "if-none-match": "*"})
    assert missing.status_code == 404
