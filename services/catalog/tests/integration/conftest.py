"""Catalog integration fixtures: the real stack (FerretDB, Redis, Kafka) and a real gRPC server.

Each test gets its own MongoDB database, Redis key prefix and Kafka topic (from
``mercato_devstack.fixtures``), and a catalog built by ``build_app`` and started with all its
parts (indexes, cache, outbox relays, sweeper, gRPC server on a free port). Access tokens are
Ed25519 JWTs minted here and verified by the server's ``JwksTokenVerifier``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato.type.v1 import money_pb2
from mercato_catalog.app import CatalogApp, build_app
from mercato_catalog.settings import CatalogSettings
from mercato_common.identity import JwksTokenVerifier
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.fixtures import (
    backends,
    kafka_bootstrap,
    kafka_topics,
    mongo_db_name,
    mongo_uri,
    redis_prefix,
    redis_url,
    stack_faults,
    topic_prefix,
)
from mercato_devstack.testing import TopicFactory

__all__ = [
    "backends",
    "kafka_bootstrap",
    "kafka_topics",
    "mongo_db_name",
    "mongo_uri",
    "redis_prefix",
    "redis_url",
    "stack_faults",
    "topic_prefix",
]

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "mercato"
ADMIN = "catalog:read catalog:write"
SERVICE = "catalog:reserve"


class Keys:
    def __init__(self) -> None:
        self.kid = "test-key"
        self.private = Ed25519PrivateKey.generate()

    async def jwks(self) -> dict[str, Any]:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "EdDSA"}]}

    def token(self, scope: str, subject: str = "admin-1") -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "exp": now + 900,
            "jti": uuid.uuid4().hex,
            "scope": scope,
        }
        return jwt.encode(
            claims, self.private, algorithm="EdDSA", headers={"kid": self.kid, "typ": "at+jwt"}
        )


@dataclass
class Catalog:
    app: CatalogApp
    stub: catalog_pb2_grpc.CatalogServiceStub
    channel: grpc.aio.Channel
    keys: Keys
    topic: str

    def auth(self, scope: str = ADMIN) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.keys.token(scope)}")]

    @property
    def admin(self) -> list[tuple[str, str]]:
        return self.auth(ADMIN)

    @property
    def service(self) -> list[tuple[str, str]]:
        return self.auth(SERVICE)

    async def create_product(
        self,
        sku: str,
        *,
        stock: int = 0,
        price: int = 1000,
        currency: str = "EUR",
        name: str | None = None,
        category: str = "",
    ) -> catalog_pb2.Product:
        response = await self.stub.CreateProduct(
            catalog_pb2.CreateProductRequest(
                product=catalog_pb2.Product(
                    sku=sku,
                    name=name or f"Product {sku}",
                    category_id=category,
                    price=money_pb2.Money(currency_code=currency, amount_minor=price),
                )
            ),
            metadata=self.admin,
        )
        product = response.product
        if stock:
            adjusted = await self.stub.AdjustStock(
                catalog_pb2.AdjustStockRequest(sku=sku, delta=stock, reason="goods received"),
                metadata=self.admin,
            )
            product = adjusted.product
        return product

    async def get(self, sku: str) -> catalog_pb2.Product:
        response = await self.stub.GetProduct(
            catalog_pb2.GetProductRequest(sku=sku), metadata=self.admin
        )
        return response.product

    async def reserve(self, order_id: str, *lines: tuple[str, int]) -> catalog_pb2.Reservation:
        response = await self.stub.ReserveStock(
            catalog_pb2.ReserveStockRequest(
                order_id=order_id,
                lines=[catalog_pb2.ReservationLine(sku=s, quantity=q) for s, q in lines],
            ),
            metadata=self.service,
        )
        return response.reservation


CatalogFactory = Callable[..., Awaitable[Catalog]]


@pytest_asyncio.fixture(loop_scope="session")
async def make_catalog(
    mongo_uri: str,
    mongo_db_name: str,
    redis_url: str,
    redis_prefix: str,
    kafka_bootstrap: str,
    kafka_topics: TopicFactory,
) -> AsyncIterator[CatalogFactory]:
    started: list[tuple[CatalogApp, grpc.aio.Channel]] = []

    async def factory(**overrides: Any) -> Catalog:
        topic = await kafka_topics.create("mercato.catalog.events.v1")
        values: dict[str, Any] = {
            "grpc_port": 0,
            "mongo_uri": mongo_uri,
            "mongo_database": mongo_db_name,
            "redis_url": redis_url,
            "redis_prefix": redis_prefix,
            "kafka_bootstrap_servers": kafka_bootstrap,
            "events_topic": topic,
            "outbox_poll_interval_seconds": 0.1,
            "shutdown_drain_seconds": 0,
            "shutdown_grace_seconds": 1,
            "sweep_interval_seconds": 0.2,
            **overrides,
        }
        settings = CatalogSettings(**values)
        keys = Keys()
        verifier = JwksTokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE)
        app = build_app(settings, token_verifier=verifier, registry=CollectorRegistry())
        await start_all(app.parts)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
        started.append((app, channel))
        return Catalog(app, catalog_pb2_grpc.CatalogServiceStub(channel), channel, keys, topic)

    yield factory
    for app, channel in reversed(started):
        await channel.close()
        await stop_all(app.parts)


@pytest_asyncio.fixture(loop_scope="session")
async def catalog(make_catalog: CatalogFactory) -> Catalog:
    return await make_catalog()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the tests that stop stack components last."""
    faulty = [item for item in items if "stack_faults" in getattr(item, "fixturenames", ())]
    if faulty:
        items[:] = [item for item in items if item not in faulty] + faulty
