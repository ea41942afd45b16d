"""The gateway in front of REAL auth and catalog servers, and small in-test orders/analytics ones.

One suite per test session (module-independent): auth over a fresh PostgreSQL database, the
catalog over a fresh MongoDB database, Redis prefix and Kafka topic (both built with their own
``build_app`` the way their integration tests do), and orders/analytics servicers written here
but served by the same ``GrpcServer`` of libs/common (so tokens are verified again upstream, as in
production). Gateways are built per test with ``suite.gateway(**overrides)``: an ASGI app for
httpx's ASGI transport, or ``suite.serve(...)`` for a real uvicorn server on a free port.
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
import httpx
import jwt
import pytest_asyncio
import uvicorn
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import timestamp_pb2
from prometheus_client import CollectorRegistry

from mercato.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from mercato.auth.v1 import auth_pb2
from mercato.orders.v1 import orders_pb2, orders_pb2_grpc
from mercato.type.v1 import money_pb2
from mercato_auth.app import AuthApp
from mercato_auth.app import build_app as build_auth
from mercato_auth.settings import AuthSettings
from mercato_catalog.app import CatalogApp
from mercato_catalog.app import build_app as build_catalog
from mercato_catalog.settings import CatalogSettings
from mercato_common.client import create_channel
from mercato_common.errors import NotFound
from mercato_common.identity import JwksTokenVerifier, auth_jwks_fetcher, current_identity
from mercato_common.runtime import start_all, stop_all
from mercato_common.server import GrpcServer
from mercato_common.settings import BaseServiceSettings
from mercato_devstack.fixtures import backends
from mercato_devstack.testing import (
    Backends,
    temporary_database,
    temporary_mongo_database,
    temporary_redis_prefix,
    temporary_topics,
)
from mercato_gateway.app import GatewayApp, build_app
from mercato_gateway.settings import GatewaySettings

__all__ = ["backends"]

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "mercato"
ADMIN_EMAIL = "root@mercato.test"
ADMIN_PASSWORD = "correct horse battery staple"
SERVICE_SECRET = "orders-client-secret-0123456789"
ORDER_ID = "3f1c6f55-0d38-4a59-8f3b-7d6f5d7a1e01"
SLOW_ORDER_ID = "3f1c6f55-0d38-4a59-8f3b-7d6f5d7a1e02"


class FakeOrders(orders_pb2_grpc.OrdersServiceServicer):
    """Canned orders; records the metadata and requests it received."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, dict[str, str]]] = []
        #: What ListOrders answers instead of the one canned order, when set.
        self.listed: list[orders_pb2.Order] | None = None
        #: The state the canned orders are in (a test moves them along).
        self.state: int = orders_pb2.ORDER_STATE_CONFIRMED

    def _record(self, name: str, request: Any, context: Any) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.seen.append((name, request, metadata))

    def _order(self, order_id: str) -> orders_pb2.Order:
        identity = current_identity()
        return orders_pb2.Order(
            id=order_id,
            user_id=identity.subject if identity else "",
            state=self.state,  # type: ignore[arg-type]
            lines=[
                orders_pb2.OrderLine(
                    sku="SKU-1",
                    quantity=2,
                    product_name="Thing",
                    unit_price=money_pb2.Money(currency_code="EUR", amount_minor=1999),
                    line_total=money_pb2.Money(currency_code="EUR", amount_minor=3998),
                )
            ],
            total=money_pb2.Money(currency_code="EUR", amount_minor=3998),
            create_time=timestamp_pb2.Timestamp(seconds=1_700_000_000),
        )

    async def CreateOrder(self, request: Any, context: Any) -> Any:
        self._record("CreateOrder", request, context)
        return orders_pb2.CreateOrderResponse(order=self._order(ORDER_ID))

    async def GetOrder(self, request: Any, context: Any) -> Any:
        self._record("GetOrder", request, context)
        if request.id == SLOW_ORDER_ID:
            await asyncio.sleep(2.0)
        if request.id not in (ORDER_ID, SLOW_ORDER_ID):
            raise NotFound("order not found", reason="ORDER_NOT_FOUND", domain="orders.mercato")
        return orders_pb2.GetOrderResponse(order=self._order(request.id))

    async def ListOrders(self, request: Any, context: Any) -> Any:
        self._record("ListOrders", request, context)
        if self.listed is not None:
            return orders_pb2.ListOrdersResponse(orders=self.listed)
        return orders_pb2.ListOrdersResponse(orders=[self._order(ORDER_ID)])

    async def PayOrder(self, request: Any, context: Any) -> Any:
        self._record("PayOrder", request, context)
        if request.id != ORDER_ID:
            raise NotFound("order not found", reason="ORDER_NOT_FOUND", domain="orders.mercato")
        return orders_pb2.PayOrderResponse(order=self._order(request.id))

    async def CancelOrder(self, request: Any, context: Any) -> Any:
        self._record("CancelOrder", request, context)
        if request.id != ORDER_ID:
            raise NotFound("order not found", reason="ORDER_NOT_FOUND", domain="orders.mercato")
        return orders_pb2.CancelOrderResponse(order=self._order(request.id))

    async def FulfillOrder(self, request: Any, context: Any) -> Any:
        self._record("FulfillOrder", request, context)
        if request.id != ORDER_ID:
            raise NotFound("order not found", reason="ORDER_NOT_FOUND", domain="orders.mercato")
        return orders_pb2.FulfillOrderResponse(order=self._order(request.id))

    async def RecordPaymentEvent(self, request: Any, context: Any) -> Any:
        self._record("RecordPaymentEvent", request, context)
        return orders_pb2.RecordPaymentEventResponse(order_id=ORDER_ID)


class FakeAnalytics(analytics_pb2_grpc.AnalyticsServiceServicer):
    async def GetSalesSummary(self, request: Any, context: Any) -> Any:
        bucket = analytics_pb2.SalesBucket(start_time=request.start_time, orders_placed=3)
        return analytics_pb2.GetSalesSummaryResponse(buckets=[bucket], total=bucket)

    async def ListTopProducts(self, request: Any, context: Any) -> Any:
        return analytics_pb2.ListTopProductsResponse(
            products=[analytics_pb2.TopProduct(rank=1, sku="SKU-1", units=5)]
        )

    async def GetFunnel(self, request: Any, context: Any) -> Any:
        return analytics_pb2.GetFunnelResponse(placed=10, paid=5)

    async def GetFreshness(self, request: Any, context: Any) -> Any:
        return analytics_pb2.GetFreshnessResponse(total_lag=0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Tokens:
    admin: str
    customer: str
    service: str  # client credentials, scope catalog:reserve only
    expired: str
    forged: str


@dataclass
class Suite:
    backends: Backends
    redis_prefix: str
    auth: AuthApp
    catalog: CatalogApp
    #: The catalog's metrics (its gRPC server counts every call it handles).
    catalog_metrics: CollectorRegistry
    orders: FakeOrders
    targets: dict[str, str]
    tokens: Tokens
    stack: AsyncExitStack
    #: Prefix of this suite's Kafka topics (the gateway's KAFKA_TOPIC_PREFIX).
    topic_prefix: str = ""
    _gateways: list[GatewayApp] = field(default_factory=list)

    def settings(self, **overrides: Any) -> GatewaySettings:
        values: dict[str, Any] = {
            **{f"{key}_target": target for key, target in self.targets.items()},
            "redis_url": self.backends.redis_url,
            "redis_prefix": f"{self.redis_prefix}{uuid.uuid4().hex[:8]}:",
            "kafka_bootstrap_servers": self.backends.kafka_bootstrap,
            "kafka_topic_prefix": self.topic_prefix,
            "token_issuer": ISSUER,
            "token_audience": AUDIENCE,
            "rate_limit_default": {"rate": 10_000, "burst": 10_000},
            "rate_limit_strict": {"rate": 10_000, "burst": 10_000},
            "port": 0,
            "metrics_port": 0,
            "shutdown_grace_seconds": 1,
        }
        values.update(overrides)
        return GatewaySettings.model_validate(values)

    async def gateway(self, **overrides: Any) -> GatewayApp:
        """A started gateway app (its parts; use ``client(app)`` to call it in-process)."""
        app = build_app(self.settings(**overrides), registry=CollectorRegistry())
        await start_all(app.parts)
        self._gateways.append(app)
        return app

    async def close_gateways(self) -> None:
        for app in reversed(self._gateways):
            await stop_all(app.parts)
        self._gateways.clear()

    @staticmethod
    def client(app: GatewayApp, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app.asgi, client=("198.51.100.7", 40000)),
            base_url="http://gateway.test",
            **kwargs,
        )

    @asynccontextmanager
    async def serve(self, **overrides: Any) -> AsyncIterator[str]:
        """A real uvicorn server (in this process and loop) on a free port; yields its URL."""
        async with self.serve_app(**overrides) as (url, _app):
            yield url

    @asynccontextmanager
    async def serve_app(self, **overrides: Any) -> AsyncIterator[tuple[str, GatewayApp]]:
        """:meth:`serve`, yielding the gateway app too."""
        app = build_app(self.settings(**overrides), registry=CollectorRegistry())
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app.asgi, lifespan="on", log_config=None, access_log=False, proxy_headers=False
        )
        server = uvicorn.Server(config)
        task = asyncio.create_task(server.serve(sockets=[sock]))
        try:
            for _ in range(200):
                if server.started:
                    break
                await asyncio.sleep(0.02)
            yield f"http://127.0.0.1:{port}", app
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 10)
            sock.close()

    def environment(self, **overrides: str) -> dict[str, str]:
        """Environment of a gateway process (``python -m mercato_gateway``) for this suite."""
        env = dict(os.environ)
        env.update(
            {
                "MERCATO_GATEWAY_AUTH_TARGET": self.targets["auth"],
                "MERCATO_GATEWAY_CATALOG_TARGET": self.targets["catalog"],
                "MERCATO_GATEWAY_ORDERS_TARGET": self.targets["orders"],
                "MERCATO_GATEWAY_ANALYTICS_TARGET": self.targets["analytics"],
                "MERCATO_GATEWAY_REDIS_URL": self.backends.redis_url,
                "MERCATO_GATEWAY_KAFKA_BOOTSTRAP_SERVERS": self.backends.kafka_bootstrap,
                "MERCATO_GATEWAY_KAFKA_TOPIC_PREFIX": self.topic_prefix,
                "MERCATO_GATEWAY_TOKEN_ISSUER": ISSUER,
                "MERCATO_GATEWAY_METRICS_PORT": "0",
                "MERCATO_GATEWAY_LOG_LEVEL": "WARNING",
                "MERCATO_GATEWAY_SHUTDOWN_GRACE_SECONDS": "1",
            }
        )
        env.update(overrides)
        return env


def _auth_settings(dsn: str, kafka: str) -> AuthSettings:
    return AuthSettings.model_validate(
        {
            "database_url": dsn,
            "database_pool_min_size": 1,
            "database_pool_max_size": 4,
            "kafka_bootstrap_servers": kafka,
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
            "throttle_account_max_failures": 2,
            "throttle_base_delay_seconds": 30,
            "bootstrap_admin_email": ADMIN_EMAIL,
            "bootstrap_admin_password": ADMIN_PASSWORD,
            "service_clients": [
                {"client_id": "orders", "secret": SERVICE_SECRET, "scopes": ["catalog:reserve"]}
            ],
        }
    )


async def _grpc(
    name: str, verifier: JwksTokenVerifier, add: Callable[..., None], servicer: Any, full: str
) -> GrpcServer:
    settings = BaseServiceSettings(
        service_name=name, grpc_port=0, shutdown_drain_seconds=0, shutdown_grace_seconds=1
    )
    server = GrpcServer(
        settings,
        error_domain=f"{name}.mercato",
        token_verifier=verifier,
        registry=CollectorRegistry(),
    )
    server.add_service(add, servicer, full)
    await server.start()
    return server


async def _tokens(auth: AuthApp, target: str) -> Tokens:
    channel = create_channel(target, services=["mercato.auth.v1.AuthService"])
    login = channel.unary_unary(
        "/mercato.auth.v1.AuthService/Login",
        request_serializer=auth_pb2.LoginRequest.SerializeToString,
        response_deserializer=auth_pb2.LoginResponse.FromString,
    )
    register = channel.unary_unary(
        "/mercato.auth.v1.AuthService/RegisterUser",
        request_serializer=auth_pb2.RegisterUserRequest.SerializeToString,
        response_deserializer=auth_pb2.RegisterUserResponse.FromString,
    )
    issue = channel.unary_unary(
        "/mercato.auth.v1.AuthService/IssueToken",
        request_serializer=auth_pb2.IssueTokenRequest.SerializeToString,
        response_deserializer=auth_pb2.IssueTokenResponse.FromString,
    )
    try:
        admin = await login(auth_pb2.LoginRequest(email=ADMIN_EMAIL, password=ADMIN_PASSWORD))
        await register(
            auth_pb2.RegisterUserRequest(
                email="carol@mercato.test", display_name="Carol", password="carol's long password"
            )
        )
        customer = await login(
            auth_pb2.LoginRequest(email="carol@mercato.test", password="carol's long password")
        )
        service = await issue(
            auth_pb2.IssueTokenRequest(
                grant_type="client_credentials", client_id="orders", client_secret=SERVICE_SECRET
            )
        )
    finally:
        await channel.close()
    key = await auth.keys.signing_key()
    now = int(time.time())
    claims = jwt.decode(admin.access_token, options={"verify_signature": False})
    expired = key.sign({**claims, "iat": now - 7200, "exp": now - 3600, "jti": uuid.uuid4().hex})
    forged = jwt.encode(
        {**claims, "jti": uuid.uuid4().hex},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": key.kid, "typ": "at+jwt"},
    )
    return Tokens(admin.access_token, customer.access_token, service.access_token, expired, forged)


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def suite(backends: Backends) -> AsyncIterator[Suite]:
    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(temporary_database(backends.postgres_dsn, "gw"))
        mongo_db = await stack.enter_async_context(
            temporary_mongo_database(backends.mongo_uri, "gw")
        )
        redis_prefix = await stack.enter_async_context(
            temporary_redis_prefix(backends.redis_url, "gw")
        )
        topics = await stack.enter_async_context(temporary_topics(backends.kafka_bootstrap))
        topic = await topics.create("mercato.catalog.events.v1")
        await topics.create("mercato.orders.events.v1")  # what GraphQL subscriptions read

        auth = build_auth(
            _auth_settings(dsn, backends.kafka_bootstrap), registry=CollectorRegistry()
        )
        await start_all(auth.parts)
        stack.push_async_callback(stop_all, auth.parts)
        auth_target = f"127.0.0.1:{auth.server.port}"

        catalog_metrics = CollectorRegistry()
        catalog = build_catalog(
            CatalogSettings(
                grpc_port=0,
                mongo_uri=backends.mongo_uri,
                mongo_database=mongo_db,
                redis_url=backends.redis_url,
                redis_prefix=redis_prefix + "catalog:",
                kafka_bootstrap_servers=backends.kafka_bootstrap,
                events_topic=topic,
                shutdown_drain_seconds=0,
                shutdown_grace_seconds=1,
                auth_target=auth_target,
                token_issuer=ISSUER,
                token_audience=AUDIENCE,
            ),
            registry=catalog_metrics,
        )
        await start_all(catalog.parts)
        stack.push_async_callback(stop_all, catalog.parts)

        jwks_channel = grpc.aio.insecure_channel(auth_target)
        stack.push_async_callback(jwks_channel.close)
        verifier = JwksTokenVerifier(
            auth_jwks_fetcher(jwks_channel, timeout=3.0), issuer=ISSUER, audience=AUDIENCE
        )
        orders = FakeOrders()
        orders_server = await _grpc(
            "orders",
            verifier,
            orders_pb2_grpc.add_OrdersServiceServicer_to_server,
            orders,
            "mercato.orders.v1.OrdersService",
        )
        stack.push_async_callback(orders_server.stop)
        analytics_server = await _grpc(
            "analytics",
            verifier,
            analytics_pb2_grpc.add_AnalyticsServiceServicer_to_server,
            FakeAnalytics(),
            "mercato.analytics.v1.AnalyticsService",
        )
        stack.push_async_callback(analytics_server.stop)

        targets = {
            "auth": auth_target,
            "catalog": f"127.0.0.1:{catalog.server.port}",
            "orders": f"127.0.0.1:{orders_server.port}",
            "analytics": f"127.0.0.1:{analytics_server.port}",
        }
        suite = Suite(
            backends=backends,
            redis_prefix=redis_prefix,
            auth=auth,
            catalog=catalog,
            catalog_metrics=catalog_metrics,
            orders=orders,
            targets=targets,
            tokens=await _tokens(auth, auth_target),
            stack=stack,
            topic_prefix=topics.prefix,
        )
        try:
            yield suite
        finally:
            await suite.close_gateways()


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(suite: Suite) -> AsyncIterator[GatewayApp]:
    app = await suite.gateway()
    yield app


@pytest_asyncio.fixture(loop_scope="session")
async def client(suite: Suite, gateway: GatewayApp) -> AsyncIterator[httpx.AsyncClient]:
    async with suite.client(gateway) as http:
        yield http


async def start_gateway_process(
    suite: Suite, prefix: str, **extra: str
) -> tuple[asyncio.subprocess.Process, str]:
    """The gateway as its own process (``python -m mercato_gateway``) on a free port, with the
    suite's settings, ``prefix`` for its Redis keys and ``extra`` settings; and its URL."""
    port = free_port()
    env = suite.environment(
        MERCATO_GATEWAY_PORT=str(port), MERCATO_GATEWAY_REDIS_PREFIX=prefix, **extra
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mercato_gateway",
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    return process, f"http://127.0.0.1:{port}"


async def wait_healthy(
    http: httpx.AsyncClient, url: str, process: asyncio.subprocess.Process
) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.returncode is not None:
            assert process.stderr is not None
            raise AssertionError((await process.stderr.read()).decode()[-2000:])
        try:
            if (await http.get(f"{url}/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"gateway at {url} did not start")


async def stop_gateway(process: asyncio.subprocess.Process) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), 15)
    except TimeoutError:
        process.kill()
        await process.wait()
