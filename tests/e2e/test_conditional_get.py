"""Conditional GET through the whole suite: ETag and If-None-Match on a product and an order.

A GET answers with a weak ``ETag``; sending it back in ``If-None-Match`` gets 304 Not Modified
without content while the resource is unchanged, and every change (a reservation moving the
product's stock, the order's transitions) gives a new ETag that the old one no longer matches.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import Api

pytestmark = pytest.mark.e2e


def _get(api: Api, path: str, if_none_match: str | None = None) -> httpx.Response:
    headers = {"If-None-Match": if_none_match} if if_none_match is not None else None
    return api.get(path, headers=headers)


def _not_modified(api: Api, path: str, tag: str, condition: str | None = None) -> None:
    response = _get(api, path, tag if condition is None else condition)
    assert response.status_code == 304, response.text
    assert response.content == b""
    assert response.headers["ETag"] == tag
    assert "Content-Length" not in response.headers


def test_product_and_order_answer_if_none_match(anonymous: Api, admin: Api, customer: Api) -> None:
    sku = admin.create_product(stock=5, price_minor=700)
    product_path = f"/v1/products/{sku}"
    product = _get(customer, product_path)
    assert product.status_code == 200
    product_tag = product.headers["ETag"]
    assert product_tag.startswith('W/"')
    _not_modified(customer, product_path, product_tag)
    _not_modified(customer, product_path, product_tag, "*")

    # Placing an order reserves stock: the product's representation, hence its ETag, changes
    # (its own field etag, which versions name, price and the like, does not).
    placed = customer.ok(customer.create_order([(sku, 2)]))["order"]
    after_order = _get(customer, product_path, product_tag)
    assert after_order.status_code == 200
    assert after_order.json()["product"]["stockReserved"] == 2
    assert after_order.json()["product"]["etag"] == product.json()["product"]["etag"]
    assert after_order.headers["ETag"] != product_tag
    _not_modified(customer, product_path, after_order.headers["ETag"])

    order_path = f"/v1/orders/{placed['id']}"
    order = _get(customer, order_path)
    assert order.status_code == 200
    order_tag = order.headers["ETag"]
    _not_modified(customer, order_path, order_tag)
    _not_modified(customer, order_path, order_tag, f'"stale", {order_tag}')

    cancelled = customer.ok(customer.post(f"{order_path}:cancel", json={"reason": "e2e"}))
    assert cancelled["order"]["state"] == "ORDER_STATE_CANCELLED"
    changed = _get(customer, order_path, order_tag)
    assert changed.status_code == 200
    assert changed.json()["order"]["state"] == "ORDER_STATE_CANCELLED"
    new_tag = changed.headers["ETag"]
    assert new_tag != order_tag
    _not_modified(customer, order_path, new_tag)

    # Someone else's order stays NOT_FOUND, whatever the condition.
    assert _get(anonymous.register(), order_path, "*").status_code == 404
