"""The end-to-end suite: the whole of mercato started once per session, driven over HTTP.

The session fixture ``suite`` starts ``python -m mercato_devstack run`` (the `make run`
supervisor) in its own process group with the environment of ``suite_env.py`` (its own state
folder and ports, short repair timings), waits for ``<state>/run/suite.json`` to say ready and
for the gateway's ``/status`` (every upstream SERVING), and stops it with SIGTERM at the end. A
suite already running on that state folder (started by hand) is reused and left running.

Tests talk to the gateway only (``Api``), except the fault tests, which also use the stack's
fault hooks (``suite.stack``) and the supervised children's pids (``suite.pid(name)``). With
``MERCATO_E2E_GATEWAY_URL`` the journeys talk to a gateway run elsewhere (tests/pods: the
cluster's gateway Service) and no suite is started.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from mercato_devstack.fixtures import service_manifest  # noqa: F401 - the services started
from mercato_devstack.private_suite import (
    PrivateSuite,
    start_private_suite,
    stop_private_suite,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from otlp_receiver import OtlpReceiver
from suite_env import suite_env

READY_TIMEOUT = 300.0
STOP_TIMEOUT = 120.0
ADMIN_EMAIL = os.environ.get("MERCATO_BOOTSTRAP_ADMIN_EMAIL", "admin@mercato.local")
ADMIN_PASSWORD = os.environ.get("MERCATO_BOOTSTRAP_ADMIN_PASSWORD", "mercato-admin-password")
PASSWORD = "e2e-correct-horse-battery"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: the whole suite over HTTP (tests/e2e)")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """schemathesis runs last: its generated failed logins all come from one address and can
    throttle it (auth's login throttling) for the tests that would follow."""
    items.sort(key=lambda item: item.path.name == "test_schemathesis.py")


def wait_until(
    predicate: Callable[[], Any], timeout: float, interval: float = 0.5, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = predicate()
            if last:
                return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached in {timeout:.0f} s (last: {last!r})")


class RunningSuite(PrivateSuite):
    """The private suite, plus what the fault tests do to it."""

    def kill_service(self, service: str) -> int:
        """SIGKILL a supervised child (its whole process group); the supervisor restarts it."""
        pid = self.pid(service)
        os.killpg(pid, signal.SIGKILL)
        return pid

    def wait_restarted(self, service: str, old_pid: int, timeout: float = 60.0) -> None:
        def restarted() -> bool:
            info = self.status()["services"][service]
            return bool(info["pid"] != old_pid and info["running"])

        wait_until(restarted, timeout, what=f"{service} restarted")
        wait_until(lambda: self.ready(), timeout, what="gateway ready")

    def orders_count(self) -> int:
        """Orders committed in the orders database (read directly, as an operator would)."""
        import asyncio

        import asyncpg

        async def count() -> int:
            conn = await asyncpg.connect(self.stack.postgres_dsn("orders"), timeout=5)
            try:
                return int(await conn.fetchval("SELECT count(*) FROM orders"))
            finally:
                await conn.close()

        return asyncio.run(count())


@pytest.fixture(scope="session")
def otlp() -> Iterator[OtlpReceiver]:
    """The OTLP trace receiver every process of the suite exports to (see suite_env.py)."""
    endpoint = suite_env()["OTEL_EXPORTER_OTLP_ENDPOINT"]
    receiver = OtlpReceiver()
    receiver.start(endpoint.removeprefix("http://"))
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture(scope="session")
def suite(otlp: OtlpReceiver) -> Iterator[RunningSuite]:
    """The whole suite, started once (or a ready one started by hand, left running)."""
    private = start_private_suite(suite_env(), ready_timeout=READY_TIMEOUT, reuse=True)
    running = RunningSuite(**vars(private))
    try:
        yield running
    finally:
        stop_private_suite(running, stop_timeout=STOP_TIMEOUT)


class ApiError(AssertionError):
    pass


@dataclass
class Api:
    """A client of the gateway, as one user (``token``) or anonymous."""

    client: httpx.Client
    token: str | None = None
    refresh_token: str | None = None
    email: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        headers = dict(self.headers)
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        headers.update(extra or {})
        return headers

    def request(
        self, method: str, path: str, *, headers: dict[str, str] | None = None, **kwargs: Any
    ) -> httpx.Response:
        return self.client.request(method, path, headers=self._headers(headers), **kwargs)

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", path, **kwargs)

    def ok(self, response: httpx.Response) -> dict[str, Any]:
        if response.status_code != 200:
            raise ApiError(
                f"{response.request.method} {response.request.url.path}: "
                f"{response.status_code} {response.text[:500]}"
            )
        return dict(response.json())

    def login(self, email: str, password: str) -> Api:
        body = self.ok(self.post("/v1/auth/login", json={"email": email, "password": password}))
        return Api(self.client, body["access_token"], body.get("refresh_token"), email)

    def register(self, password: str = PASSWORD) -> Api:
        email = f"e2e-{uuid.uuid4().hex[:12]}@example.com"
        body = {"email": email, "displayName": "E2E customer", "password": password}
        self.ok(self.post("/v1/users", json=body))
        return self.login(email, password)

    def create_order(
        self, lines: list[tuple[str, int]], key: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        return self.post(
            "/v1/orders",
            headers={"Idempotency-Key": key or str(uuid.uuid4())},
            json={"lines": [{"sku": sku, "quantity": qty} for sku, qty in lines]},
            **kwargs,
        )

    def product(self, sku: str) -> dict[str, Any]:
        return dict(self.ok(self.get(f"/v1/products/{sku}"))["product"])

    def create_product(self, stock: int, price_minor: int = 1000) -> str:
        """A fresh product with ``stock`` units (admin only): tests never share stock."""
        sku = f"E2E-{uuid.uuid4().hex[:10].upper()}"
        product = {
            "sku": sku,
            "name": f"E2E product {sku}",
            "categoryId": "books",
            "price": {"currencyCode": "EUR", "amountMinor": str(price_minor)},
        }
        self.ok(self.post("/v1/products", json=product))
        adjust = {"delta": stock, "reason": "e2e: initial stock"}
        self.ok(self.post(f"/v1/products/{sku}:adjustStock", json=adjust))
        return sku

    def funnel(self) -> dict[str, Any]:
        """The analytics funnel over all time (zero counts are omitted by proto3 JSON)."""
        now = dt.datetime.now(dt.UTC)
        params = {
            "startTime": "2000-01-01T00:00:00Z",
            "endTime": (now + dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        return self.ok(self.get("/v1/analytics/funnel", params=params))


@pytest.fixture(scope="session")
def http(request: pytest.FixtureRequest) -> Iterator[httpx.Client]:
    """A client of the private suite's gateway, or of MERCATO_E2E_GATEWAY_URL when set: a gateway
    run elsewhere (tests/pods runs the journeys through the cluster's gateway Service so)."""
    url = os.environ.get("MERCATO_E2E_GATEWAY_URL") or request.getfixturevalue("suite").url
    with httpx.Client(base_url=url, timeout=30) as client:
        yield client


@pytest.fixture(scope="session")
def anonymous(http: httpx.Client) -> Api:
    return Api(http)


@pytest.fixture(scope="session")
def admin(anonymous: Api) -> Api:
    return anonymous.login(ADMIN_EMAIL, ADMIN_PASSWORD)


@pytest.fixture
def customer(anonymous: Api) -> Api:
    return anonymous.register()
