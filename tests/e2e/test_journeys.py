"""End-to-end journeys through the gateway over HTTP: what a customer and an admin do."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import pytest
from conftest import Api, wait_until

pytestmark = pytest.mark.e2e

ANALYTICS_TIMEOUT = 30.0


def test_customer_buys_and_admin_fulfils(anonymous: Api, admin: Api) -> None:
    sku = admin.create_product(stock=10, price_minor=1200)
    before = admin.funnel()

    # Register, log in, browse.
    customer = anonymous.register()
    listing = customer.ok(customer.get("/v1/products"))
    assert listing["products"], "the catalog lists products"
    product = customer.product(sku)
    assert product["stockAvailable"] == 10
    assert product["price"] == {"currencyCode": "EUR", "amountMinor": "1200"}

    # Place an order; the client retries the same request (same Idempotency-Key): one order.
    key = str(uuid.uuid4())
    first = customer.ok(customer.create_order([(sku, 2)], key=key))["order"]
    retry = customer.ok(customer.create_order([(sku, 2)], key=key))["order"]
    assert retry["id"] == first["id"]
    assert first["state"] == "ORDER_STATE_CONFIRMED"
    assert first["total"] == {"currencyCode": "EUR", "amountMinor": "2400"}
    assert customer.product(sku)["stockAvailable"] == 8, "reserved once, not twice"

    # Pay, then see it.
    pay = {
        "paymentToken": "tok_test_ok",
        "amount": {"currencyCode": "EUR", "amountMinor": "2400"},
    }
    paid = customer.ok(customer.post(f"/v1/orders/{first['id']}:pay", json=pay))["order"]
    assert paid["state"] == "ORDER_STATE_PAID"
    seen = customer.ok(customer.get(f"/v1/orders/{first['id']}"))["order"]
    assert seen["state"] == "ORDER_STATE_PAID"
    mine = customer.ok(customer.get("/v1/orders"))
    assert first["id"] in [order["id"] for order in mine["orders"]]

    # The admin fulfils it ...
    done = admin.ok(admin.post(f"/v1/orders/{first['id']}:fulfill", json={}))["order"]
    assert done["state"] == "ORDER_STATE_FULFILLED"
    assert customer.product(sku)["stockOnHand"] == 8

    # ... and sees it in analytics (eventually: events flow through Kafka).
    def counted() -> dict[str, object] | None:
        funnel = admin.funnel()
        grew = all(
            int(funnel.get(name, 0)) >= int(before.get(name, 0)) + 1
            for name in ("placed", "paid", "fulfilled")
        )
        return funnel if grew else None

    wait_until(counted, ANALYTICS_TIMEOUT, what="the order in the analytics funnel")
    now = dt.datetime.now(dt.UTC)
    sales = admin.ok(
        admin.get(
            "/v1/analytics/sales",
            params={
                "bucket": "BUCKET_DAY",
                "startTime": (now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "endTime": (now + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )
    )
    assert int(sales["total"]["ordersFulfilled"]) >= 1
    freshness = admin.ok(admin.get("/v1/analytics/freshness"))
    assert "newestEventTime" in freshness


def test_token_refresh_and_logout(anonymous: Api) -> None:
    customer = anonymous.register()
    assert customer.refresh_token
    form = {
        "grant_type": "refresh_token",
        "refresh_token": customer.refresh_token,
        "client_id": "mercato-web",
    }
    refreshed = anonymous.post("/oauth2/token", data=form)
    assert refreshed.status_code == 200, refreshed.text
    body = refreshed.json()
    assert body["access_token"]
    assert body["refresh_token"] != customer.refresh_token
    assert refreshed.headers["Cache-Control"] == "no-store"
    renewed = Api(anonymous.client, body["access_token"], body["refresh_token"])
    assert renewed.get("/v1/users/me").status_code == 200

    # Logout: revoke the refresh token; refreshing with it then fails.
    revoke = {"token": renewed.refresh_token, "client_id": "mercato-web"}
    assert anonymous.post("/oauth2/revoke", data=revoke).status_code == 200
    again = anonymous.post("/oauth2/token", data={**form, "refresh_token": renewed.refresh_token})
    assert again.status_code == 400, again.text
    assert again.json()["error"] == "invalid_grant"

    # ...and revoke the access token: the gateway (and every service) refuse it within about a
    # second (the clean answer each verifier remembers), though it has not expired.
    assert renewed.get("/v1/users/me").status_code == 200
    revoke_access = {"token": renewed.token, "token_type_hint": "access_token"}
    assert anonymous.post("/oauth2/revoke", data=revoke_access).status_code == 200
    wait_until(
        lambda: renewed.get("/v1/users/me").status_code == 401, 10, what="access token refused"
    )
    refused = renewed.get("/v1/users/me")
    assert refused.json()["error"]["reason"] == "TOKEN_REVOKED", refused.text
    assert 'error="invalid_token"' in refused.headers["WWW-Authenticate"]


def test_disabling_a_user_ends_its_sessions(anonymous: Api, admin: Api) -> None:
    customer = anonymous.register()
    me = customer.ok(customer.get("/v1/users/me"))["user"]
    admin.ok(admin.post(f"/v1/users/{me['id']}:disable", json={"reason": "e2e"}))
    # Its access token is refused everywhere, not only its refresh token and its logins.
    wait_until(
        lambda: customer.get("/v1/users/me").status_code == 401, 10, what="access token refused"
    )
    for path in ("/v1/users/me", "/v1/orders"):
        refused = customer.get(path)
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"]["reason"] == "TOKEN_REVOKED"


def test_cancel_returns_stock(customer: Api, admin: Api) -> None:
    sku = admin.create_product(stock=5)
    order = customer.ok(customer.create_order([(sku, 3)]))["order"]
    assert customer.product(sku)["stockAvailable"] == 2
    cancelled = customer.ok(customer.post(f"/v1/orders/{order['id']}:cancel", json={}))
    assert cancelled["order"]["state"] == "ORDER_STATE_CANCELLED"
    wait_until(lambda: customer.product(sku)["stockAvailable"] == 5, 15, what="stock released")

    # A paid order cancelled before fulfilment gives its sold units back too.
    order = customer.ok(customer.create_order([(sku, 1)]))["order"]
    pay = {"paymentToken": "tok_test_ok", "amount": order["total"]}
    customer.ok(customer.post(f"/v1/orders/{order['id']}:pay", json=pay))
    assert customer.product(sku)["stockOnHand"] == 4
    customer.ok(customer.post(f"/v1/orders/{order['id']}:cancel", json={}))
    wait_until(lambda: customer.product(sku)["stockAvailable"] == 5, 15, what="sold stock returned")


def test_admin_routes_refuse_a_customer(customer: Api, anonymous: Api) -> None:
    now = dt.datetime.now(dt.UTC)
    window = {
        "startTime": (now - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "endTime": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    admin_only: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", "/v1/analytics/sales", {"params": {**window, "bucket": "BUCKET_DAY"}}),
        ("GET", "/v1/analytics/funnel", {"params": window}),
        ("GET", "/v1/analytics/freshness", {}),
        ("POST", f"/v1/orders/{uuid.uuid4()}:fulfill", {"json": {}}),
        (
            "POST",
            "/v1/products",
            {
                "json": {
                    "sku": "E2E-NOT-ALLOWED",
                    "name": "x",
                    "price": {"currencyCode": "EUR", "amountMinor": "1"},
                }
            },
        ),
        ("POST", "/v1/products/BOOK-TEA-1:adjustStock", {"json": {"delta": 5, "reason": "x"}}),
    ]
    for method, path, kwargs in admin_only:
        refused = customer.request(method, path, **kwargs)
        assert refused.status_code == 403, f"{method} {path}: {refused.status_code}"
        assert refused.json()["error"]["status"] == "PERMISSION_DENIED"
        anonymous_answer = anonymous.request(method, path, **kwargs)
        assert anonymous_answer.status_code == 401, f"{method} {path} without a token"
