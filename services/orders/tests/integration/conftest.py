"""The orders service against the real stack, next to REAL auth and catalog servers.

* **auth**: one server for the session (``mercato_auth.app.build_app`` over its own PostgreSQL
  database), with the bootstrap admin and the ``orders`` service client (scope
  ``catalog:reserve``). Users register and log in through it; every token in these tests is
  one auth signed.
* **catalog**: one server per test (``mercato_catalog.app.build_app`` over the test's MongoDB
  database, Redis prefix and Kafka topic), verifying tokens against auth's JWKS over gRPC, as
  in production. The orders service reaches it through :class:`TcpProxy`, which a test can cut
  to make the catalog unreachable without touching the shared stack.
* **orders**: ``mercato_orders.app.build_app`` over the test's fresh PostgreSQL database
  (``postgres_dsn``), its own Kafka topic when events are checked.

Backends come from ``mercato_devstack.fixtures`` (local stack, testcontainers or env vars).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import asyncpg
import grpc
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry

from mercato.auth.v1 import auth_pb2, auth_pb2_grpc
from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato.orders.v1 import orders_pb2, orders_pb2_grpc
from mercato.type.v1 import money_pb2
from mercato_auth.app import AuthApp
from mercato_auth.app import build_app as build_auth
from mercato_auth.settings import AuthSettings
from mercato_catalog.app import CatalogApp
from mercato_catalog.app import build_app as build_catalog
from mercato_catalog.settings import CatalogSettings
from mercato_common.kafka import decode_envelope
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.fixtures import (
    backends,
    kafka_bootstrap,
    kafka_topics,
    mongo_db_name,
    mongo_uri,
    postgres_admin_dsn,
    postgres_dsn,
    redis_prefix,
    redis_url,
    topic_prefix,
)
from mercato_devstack.testing import TopicFactory, temporary_database
from mercato_orders.app import OrdersApp, build_app
from mercato_orders.service import Reconciliation
from mercato_orders.settings import OrdersSettings

__all__ = [
    "backends",
    "kafka_bootstrap",
    "kafka_topics",
    "mongo_db_name",
    "mongo_uri",
    "postgres_admin_dsn",
    "postgres_dsn",
    "redis_prefix",
    "redis_url",
    "topic_prefix",
]

ISSUER = "https://api.mercato.test"
AUDIENCE = "mercato"
ADMIN_EMAIL = "root@orders.test"
ADMIN_PASSWORD = "correct horse battery staple"
ORDERS_SECRET = "orders-client-secret-0123456789"
PASSWORD = "a long enough password"


# --- status details ---------------------------------------------------------------------------


@dataclass
class Failure:
    code: grpc.StatusCode
    reason: str
    domain: str
    metadata: dict[str, str]
    violations: list[tuple[str, str]]  # PreconditionFailure (type, subject)
    fields: list[str]  # BadRequest field paths


def failure(error: grpc.aio.AioRpcError) -> Failure:
    status = status_pb2.Status()
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status.MergeFromString(value)
    result = Failure(error.code(), "", "", {}, [], [])
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            result.reason, result.domain, result.metadata = (
                info.reason,
                info.domain,
                dict(info.metadata),
            )
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            pf = error_details_pb2.PreconditionFailure()
            detail.Unpack(pf)
            result.violations = [(v.type, v.subject) for v in pf.violations]
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            result.fields = [v.field for v in bad.field_violations]
    return result


async def fails(call: Awaitable[Any]) -> Failure:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return failure(caught.value)


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


# --- a cuttable TCP proxy ---------------------------------------------------------------------


class TcpProxy:
    """Forwards a local port to a target; ``cut()`` drops every connection and refuses new ones
    (the target looks down), ``restore()`` listens again on the same port."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        except OSError:
            writer.close()
            return
        self._writers.update({writer, up_writer})
        tasks = {
            asyncio.create_task(self._pipe(reader, up_writer)),
            asyncio.create_task(self._pipe(up_reader, writer)),
        }
        self._tasks.update(tasks)
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.difference_update(tasks)
        self._writers.difference_update({writer, up_writer})

    async def cut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.sleep(0)

    async def restore(self) -> None:
        if self._server is None:
            await self.start()

    async def stop(self) -> None:
        await self.cut()


# --- auth (one per session) -------------------------------------------------------------------


@dataclass
class Auth:
    app: AuthApp
    stub: auth_pb2_grpc.AuthServiceAsyncStub
    channel: grpc.aio.Channel
    target: str
    _admin: str | None = None

    async def login(self, email: str, password: str = PASSWORD) -> str:
        response = await self.stub.Login(
            auth_pb2.LoginRequest(email=email, password=password),
            metadata=[("x-forwarded-for", f"198.51.100.{uuid.uuid4().int % 250 + 1}")],
        )
        return response.access_token

    async def admin_token(self) -> str:
        if self._admin is None:
            self._admin = await self.login(ADMIN_EMAIL, ADMIN_PASSWORD)
        return self._admin

    async def admin_md(self) -> list[tuple[str, str]]:
        return bearer(await self.admin_token())

    async def customer(self) -> Customer:
        email = f"c-{uuid.uuid4().hex[:12]}@orders.test"
        response = await self.stub.RegisterUser(
            auth_pb2.RegisterUserRequest(email=email, display_name="Customer", password=PASSWORD)
        )
        return Customer(response.user.id, await self.login(email))


@dataclass
class Customer:
    user_id: str
    token: str

    @property
    def md(self) -> list[tuple[str, str]]:
        return bearer(self.token)


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def auth(postgres_admin_dsn: str, kafka_bootstrap: str) -> AsyncIterator[Auth]:
    import base64
    import os

    async with temporary_database(postgres_admin_dsn, prefix="orders_auth") as dsn:
        settings = AuthSettings.model_validate(
            {
                "database_url": dsn,
                "database_pool_min_size": 1,
                "database_pool_max_size": 6,
                "kafka_bootstrap_servers": kafka_bootstrap,
                "outbox_relay_enabled": False,
                "signing_key_kek": base64.b64encode(os.urandom(32)).decode(),
                "grpc_port": 0,
                "shutdown_drain_seconds": 0,
                "shutdown_grace_seconds": 1,
                "token_issuer": ISSUER,
                "token_audience": AUDIENCE,
                "argon2_time_cost": 1,
                "argon2_memory_cost_kib": 1024,
                "argon2_parallelism": 1,
                # Many logins from one test process: no throttling in the way.
                "throttle_address_max_failures": 1000,
                "bootstrap_admin_email": ADMIN_EMAIL,
                "bootstrap_admin_password": ADMIN_PASSWORD,
                "service_clients": [
                    {"client_id": "orders", "secret": ORDERS_SECRET, "scopes": ["catalog:reserve"]}
                ],
            }
        )
        app = build_auth(settings, registry=CollectorRegistry())
        await start_all(app.parts)
        target = f"127.0.0.1:{app.server.port}"
        channel = grpc.aio.insecure_channel(target)
        try:
            yield Auth(app, auth_pb2_grpc.AuthServiceStub(channel), channel, target)
        finally:
            await channel.close()
            await stop_all(app.parts)


# --- catalog (one per test) -------------------------------------------------------------------


@dataclass
class Catalog:
    app: CatalogApp
    stub: catalog_pb2_grpc.CatalogServiceAsyncStub
    channel: grpc.aio.Channel
    proxy: TcpProxy
    admin_token: str
    service_token: str

    @property
    def admin(self) -> list[tuple[str, str]]:
        return bearer(self.admin_token)

    @property
    def service(self) -> list[tuple[str, str]]:
        return bearer(self.service_token)

    async def product(
        self, sku: str, *, stock: int = 100, price: int = 1250, currency: str = "EUR"
    ) -> catalog_pb2.Product:
        await self.stub.CreateProduct(
            catalog_pb2.CreateProductRequest(
                product=catalog_pb2.Product(
                    sku=sku,
                    name=f"Product {sku}",
                    price=money_pb2.Money(currency_code=currency, amount_minor=price),
                )
            ),
            metadata=self.admin,
        )
        if stock:
            await self.stub.AdjustStock(
                catalog_pb2.AdjustStockRequest(sku=sku, delta=stock, reason="goods received"),
                metadata=self.admin,
            )
        return await self.get(sku)

    async def get(self, sku: str) -> catalog_pb2.Product:
        response = await self.stub.GetProduct(
            catalog_pb2.GetProductRequest(sku=sku), metadata=self.admin
        )
        return response.product

    async def stock(self, sku: str) -> tuple[int, int, int]:
        """(on hand, reserved, available), read from MongoDB (not the read cache)."""
        response = await self.stub.BatchGetProducts(
            catalog_pb2.BatchGetProductsRequest(skus=[sku]), metadata=self.service
        )
        p = response.products[0]
        return p.stock_on_hand, p.stock_reserved, p.stock_available

    async def reservation(self, order_id: str) -> catalog_pb2.Reservation | None:
        try:
            response = await self.stub.GetReservation(
                catalog_pb2.GetReservationRequest(order_id=order_id), metadata=self.service
            )
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return None
            raise
        return response.reservation

    async def reservations(self) -> list[catalog_pb2.Reservation]:
        response = await self.stub.ListReservations(
            catalog_pb2.ListReservationsRequest(page_size=100), metadata=self.service
        )
        return list(response.reservations)


async def _service_token(auth: Auth) -> str:
    response = await auth.stub.IssueToken(
        auth_pb2.IssueTokenRequest(
            grant_type="client_credentials",
            client_id="orders",
            client_secret=ORDERS_SECRET,
            scope="catalog:reserve",
        )
    )
    return response.access_token


@pytest_asyncio.fixture(loop_scope="session")
async def catalog(
    auth: Auth,
    mongo_uri: str,
    mongo_db_name: str,
    redis_url: str,
    redis_prefix: str,
    kafka_bootstrap: str,
    kafka_topics: TopicFactory,
) -> AsyncIterator[Catalog]:
    topic = await kafka_topics.create("mercato.catalog.events.v1")
    settings = CatalogSettings(
        grpc_port=0,
        mongo_uri=mongo_uri,
        mongo_database=mongo_db_name,
        redis_url=redis_url,
        redis_prefix=redis_prefix,
        kafka_bootstrap_servers=kafka_bootstrap,
        events_topic=topic,
        outbox_poll_interval_seconds=0.2,
        shutdown_drain_seconds=0,
        shutdown_grace_seconds=1,
        sweep_interval_seconds=0.5,
        auth_target=auth.target,
        token_issuer=ISSUER,
        token_audience=AUDIENCE,
    )
    app = build_catalog(settings, registry=CollectorRegistry())
    await start_all(app.parts)
    assert app.server.port is not None
    proxy = TcpProxy(app.server.port)
    await proxy.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
    try:
        yield Catalog(
            app,
            catalog_pb2_grpc.CatalogServiceStub(channel),
            channel,
            proxy,
            await auth.admin_token(),
            await _service_token(auth),
        )
    finally:
        await proxy.stop()
        await channel.close()
        await stop_all(app.parts)


# --- orders -----------------------------------------------------------------------------------


@dataclass
class Orders:
    app: OrdersApp
    stub: orders_pb2_grpc.OrdersServiceAsyncStub
    channel: grpc.aio.Channel
    dsn: str
    topic: str
    catalog: Catalog
    auth: Auth
    kafka: str

    # Helpers for the test modules (which cannot import this conftest by name).
    fails = staticmethod(fails)
    failure = staticmethod(failure)

    async def consume(self, until: Callable[[list[Any]], bool]) -> list[Any]:
        return await consume(self.kafka, self.topic, until)

    @staticmethod
    def event_types(records: list[Any], order_id: str) -> list[str]:
        return event_types(records, order_id)

    async def create(
        self,
        customer: Customer,
        *lines: tuple[str, int],
        key: str | None = None,
        deadline: float | None = None,
    ) -> orders_pb2.Order:
        response = await self.stub.CreateOrder(
            orders_pb2.CreateOrderRequest(
                order=orders_pb2.Order(
                    lines=[orders_pb2.OrderLine(sku=s, quantity=q) for s, q in lines]
                ),
                idempotency_key=key or str(uuid.uuid4()),
            ),
            metadata=customer.md,
            timeout=deadline,
        )
        return response.order

    async def pay(
        self,
        md: list[tuple[str, str]],
        order: orders_pb2.Order,
        token: str = "tok_test_ok",
        amount: int | None = None,
    ) -> orders_pb2.Order:
        response = await self.stub.PayOrder(
            orders_pb2.PayOrderRequest(
                id=order.id,
                payment_token=token,
                amount=money_pb2.Money(
                    currency_code=order.total.currency_code,
                    amount_minor=order.total.amount_minor if amount is None else amount,
                ),
            ),
            metadata=md,
        )
        return response.order

    async def cancel(
        self, md: list[tuple[str, str]], order_id: str, reason: str = ""
    ) -> orders_pb2.Order:
        response = await self.stub.CancelOrder(
            orders_pb2.CancelOrderRequest(id=order_id, reason=reason), metadata=md
        )
        return response.order

    async def fulfil(self, order_id: str, reference: str = "") -> orders_pb2.Order:
        response = await self.stub.FulfillOrder(
            orders_pb2.FulfillOrderRequest(id=order_id, shipment_reference=reference),
            metadata=bearer(await self.auth.admin_token()),
        )
        return response.order

    async def get(self, md: list[tuple[str, str]], order_id: str) -> orders_pb2.Order:
        response = await self.stub.GetOrder(orders_pb2.GetOrderRequest(id=order_id), metadata=md)
        return response.order

    async def fetch(self, query: str, *args: Any) -> list[Any]:
        conn = await asyncpg.connect(self.dsn)
        try:
            rows: list[Any] = await conn.fetch(query, *args)
            return rows
        finally:
            await conn.close()

    def reconciler(self, **overrides: Any) -> Reconciliation:
        values: dict[str, Any] = {
            "retry_after": timedelta(seconds=0.2),
            "orphan_grace": timedelta(0),
            "reservation_check_after": timedelta(0),
        }
        values.update(overrides)
        return Reconciliation(self.app.service, **values)


def orders_settings(
    dsn: str, kafka: str, auth: Auth, catalog: Catalog, topic: str, **overrides: Any
) -> OrdersSettings:
    values: dict[str, Any] = {
        "database_url": dsn,
        "database_pool_min_size": 1,
        "database_pool_max_size": 8,
        "database_command_timeout_seconds": 5,
        "kafka_bootstrap_servers": kafka,
        "events_topic": topic,
        "outbox_relay_enabled": False,
        "outbox_poll_interval_seconds": 0.2,
        "grpc_port": 0,
        "shutdown_drain_seconds": 0,
        "shutdown_grace_seconds": 1,
        "auth_target": auth.target,
        "token_issuer": ISSUER,
        "token_audience": AUDIENCE,
        "service_client_secret": ORDERS_SECRET,
        "payment_provider": "dev",
        "catalog_target": f"127.0.0.1:{catalog.proxy.port}",
        "catalog_timeout_seconds": 2,
        "auth_timeout_seconds": 2,
        "compensation_timeout_seconds": 2,
        "idempotency_lease_seconds": 12,
        "reconcile_orphan_grace_seconds": 12,
        # Reconciliation runs when a test asks (Orders.reconciler()), not in the background.
        "reconcile_enabled": False,
    }
    values.update(overrides)
    return OrdersSettings.model_validate(values)


OrdersFactory = Callable[..., Awaitable[Orders]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_orders(
    postgres_dsn: str,
    kafka_bootstrap: str,
    kafka_topics: TopicFactory,
    auth: Auth,
    catalog: Catalog,
) -> AsyncIterator[OrdersFactory]:
    started: list[tuple[OrdersApp, grpc.aio.Channel]] = []

    async def factory(*, events: bool = False, **overrides: Any) -> Orders:
        topic = (
            await kafka_topics.create("mercato.orders.events.v1", partitions=3)
            if events
            else "mercato.orders.events.v1.unused"
        )
        if events:
            overrides.setdefault("outbox_relay_enabled", True)
        settings = orders_settings(postgres_dsn, kafka_bootstrap, auth, catalog, topic, **overrides)
        app = build_app(settings, registry=CollectorRegistry())
        await start_all(app.parts)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
        started.append((app, channel))
        return Orders(
            app,
            orders_pb2_grpc.OrdersServiceStub(channel),
            channel,
            postgres_dsn,
            topic,
            catalog,
            auth,
            kafka_bootstrap,
        )

    yield factory
    for app, channel in reversed(started):
        await channel.close()
        await stop_all(app.parts)


@pytest_asyncio.fixture(loop_scope="session")
async def orders(make_orders: OrdersFactory) -> Orders:
    return await make_orders()


async def consume(bootstrap: str, topic: str, until: Callable[[list[Any]], bool]) -> list[Any]:
    """Records of ``topic`` from the beginning until ``until(records)`` holds (30 s at most)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(30):
            while not until(records):
                batch = await consumer.getmany(timeout_ms=300)
                for partition_records in batch.values():
                    records.extend(partition_records)
    finally:
        await consumer.stop()
    return records


def event_types(records: list[Any], order_id: str) -> list[str]:
    """Types of the events of one order, in topic order (one partition per key)."""
    out = []
    for record in records:
        envelope = decode_envelope(record.value)
        if envelope.subject == order_id:
            out.append(envelope.type.rsplit(".", 1)[-1])
    return out
