"""Load of the whole suite through the gateway: a realistic mix, runnable headless (`make load`).

    uv run --frozen locust -f loadtest/locustfile.py --headless -u 20 -r 5 -t 30s \\
        --host http://127.0.0.1:8080

Users (by weight): shoppers browse a lot (list, product pages, categories), now and then place
an order (a unique Idempotency-Key), pay most of them and cancel some, and look at their orders;
a few admins read analytics. At the start an admin creates (or restocks) a bulk product
``LOAD-BULK-1`` that the orders mostly buy, so the run does not fail on the sample catalog's
small stock; orders of the sample products may be refused with 409 (out of stock), which is a
valid answer and not counted as a failure. 429s on the public-write class (register, login:
2/s per address by default) are waited out per ``Retry-After``; set
``MERCATO_GATEWAY_RATE_LIMIT_STRICT`` higher on the gateway for large user counts.

Environment: ``MERCATO_BOOTSTRAP_ADMIN_EMAIL`` / ``_PASSWORD`` (the dev defaults otherwise).
"""

from __future__ import annotations

import datetime as dt
import os
import random
import time
import uuid
from typing import Any

import requests
from locust import HttpUser, between, events, task
from locust.env import Environment

ADMIN_EMAIL = os.environ.get("MERCATO_BOOTSTRAP_ADMIN_EMAIL", "admin@mercato.local")
ADMIN_PASSWORD = os.environ.get("MERCATO_BOOTSTRAP_ADMIN_PASSWORD", "mercato-admin-password")
PASSWORD = "load-correct-horse-battery"  # noqa: S105 - load-test users' password
BULK_SKU = "LOAD-BULK-1"
BULK_STOCK_FLOOR = 50_000
SAMPLE_SKUS = ["TEA-SENCHA-100", "TEA-ASSAM-250", "KNIFE-PARING-9", "BOOK-PASTA-1"]
STRICT_RETRIES = 30


def _login(post: Any, email: str, password: str) -> dict[str, Any]:
    """Log in, waiting out 429s of the public-write rate limit."""
    for _ in range(STRICT_RETRIES):
        response = post(email, password)
        if response.status_code == 429:
            time.sleep(float(response.headers.get("Retry-After", "1")))
            continue
        response.raise_for_status()
        return dict(response.json())
    raise RuntimeError(f"login of {email} still rate-limited after {STRICT_RETRIES} tries")


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def ensure_bulk_product(environment: Environment, **_: Any) -> None:
    """Create ``LOAD-BULK-1`` (idempotently) and top its stock up, as the admin."""
    host = (environment.host or "http://127.0.0.1:8080").rstrip("/")
    session = requests.Session()

    def post(email: str, password: str) -> requests.Response:
        body = {"email": email, "password": password}
        return session.post(f"{host}/v1/auth/login", json=body, timeout=10)

    token = _login(post, ADMIN_EMAIL, ADMIN_PASSWORD)["access_token"]
    session.headers["Authorization"] = f"Bearer {token}"
    product: dict[str, Any] = {
        "sku": BULK_SKU,
        "name": "Load-test bulk tea",
        "categoryId": "tea",
        "price": {"currencyCode": "EUR", "amountMinor": "500"},
    }
    created = session.post(f"{host}/v1/products", json=product, timeout=10)
    if created.status_code not in (200, 409):
        created.raise_for_status()
    current = session.get(f"{host}/v1/products/{BULK_SKU}", timeout=10)
    current.raise_for_status()
    available = int(current.json()["product"].get("stockAvailable", 0))
    if available < BULK_STOCK_FLOOR:
        adjust: dict[str, Any] = {
            "delta": 2 * BULK_STOCK_FLOOR - available,
            "reason": "load test: restock",
        }
        session.post(
            f"{host}/v1/products/{BULK_SKU}:adjustStock", json=adjust, timeout=10
        ).raise_for_status()


class _ApiUser(HttpUser):
    abstract = True
    token = ""

    def _login(self, email: str, password: str) -> None:
        def post(email: str, password: str) -> Any:
            with self.client.post(
                "/v1/auth/login",
                json={"email": email, "password": password},
                name="/v1/auth/login",
                catch_response=True,
            ) as response:
                if response.status_code == 429:
                    response.success()  # waited out, not a failure of the system
                return response

        body = _login(post, email, password)
        self.token = body["access_token"]
        self.client.headers["Authorization"] = f"Bearer {self.token}"


class Shopper(_ApiUser):
    """Browse-heavy: mostly reads, an order now and then, paid or cancelled."""

    weight = 9
    wait_time = between(0.5, 2.0)

    def on_start(self) -> None:
        email = f"load-{uuid.uuid4().hex[:12]}@example.com"
        for _ in range(STRICT_RETRIES):
            with self.client.post(
                "/v1/users",
                json={"email": email, "displayName": "Load shopper", "password": PASSWORD},
                name="/v1/users",
                catch_response=True,
            ) as response:
                if response.status_code == 429:
                    response.success()
                    time.sleep(float(response.headers.get("Retry-After", "1")))
                    continue
                break
        self._login(email, PASSWORD)
        self.skus = list(SAMPLE_SKUS)

    @task(10)
    def list_products(self) -> None:
        with self.client.get("/v1/products", name="/v1/products", catch_response=True) as r:
            if r.status_code == 200:
                skus = [p["sku"] for p in r.json().get("products", [])]
                self.skus = skus or self.skus

    @task(8)
    def view_product(self) -> None:
        sku = random.choice(self.skus)
        self.client.get(f"/v1/products/{sku}", name="/v1/products/{sku}")

    @task(2)
    def list_categories(self) -> None:
        self.client.get("/v1/categories", name="/v1/categories")

    @task(2)
    def my_orders(self) -> None:
        self.client.get("/v1/orders", name="/v1/orders")

    @task(3)
    def buy(self) -> None:
        lines = [{"sku": BULK_SKU, "quantity": random.randint(1, 3)}]
        if random.random() < 0.2:
            lines.append({"sku": random.choice(SAMPLE_SKUS), "quantity": 1})
        with self.client.post(
            "/v1/orders",
            json={"lines": lines},
            headers={"Idempotency-Key": str(uuid.uuid4())},
            name="/v1/orders [create]",
            catch_response=True,
        ) as response:
            if response.status_code == 409:
                response.success()  # out of stock: a valid answer
                return
            if response.status_code != 200:
                return
            order = response.json()["order"]
        order_id = order["id"]
        self.client.get(f"/v1/orders/{order_id}", name="/v1/orders/{id}")
        if random.random() < 0.8:
            pay = {"paymentToken": "tok_test_ok", "amount": order["total"]}
            self.client.post(f"/v1/orders/{order_id}:pay", json=pay, name="/v1/orders/{id}:pay")
        else:
            self.client.post(
                f"/v1/orders/{order_id}:cancel", json={}, name="/v1/orders/{id}:cancel"
            )


class Admin(_ApiUser):
    """Reads analytics and the back office's lists."""

    weight = 1
    wait_time = between(1.0, 3.0)

    def on_start(self) -> None:
        self._login(ADMIN_EMAIL, ADMIN_PASSWORD)

    def _window(self, days: int) -> dict[str, str]:
        now = dt.datetime.now(dt.UTC)
        return {
            "startTime": (now - dt.timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "endTime": (now + dt.timedelta(minutes=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    @task(3)
    def sales(self) -> None:
        params = {**self._window(7), "bucket": "BUCKET_DAY"}
        self.client.get("/v1/analytics/sales", params=params, name="/v1/analytics/sales")

    @task(2)
    def funnel(self) -> None:
        params = self._window(7)
        self.client.get("/v1/analytics/funnel", params=params, name="/v1/analytics/funnel")

    @task(2)
    def top_products(self) -> None:
        params = {**self._window(7), "rankBy": "RANK_BY_UNITS"}
        self.client.get(
            "/v1/analytics/top-products", params=params, name="/v1/analytics/top-products"
        )

    @task(1)
    def freshness(self) -> None:
        self.client.get("/v1/analytics/freshness", name="/v1/analytics/freshness")
