"""Analytics integration fixtures: the real stack (Kafka, FerretDB) and a real gRPC server.

Each test gets its own topics (every topics.yaml topic under the test's prefix, 6 partitions
per event topic), its own consumer group and its own MongoDB database (from
``mercato_devstack.fixtures``). ``make_analytics`` builds the service with ``build_app`` and
starts all its parts (indexes, consumers, dead-letter producer, gRPC server on a free port).
Access tokens are Ed25519 JWTs minted here and verified by the server's ``JwksTokenVerifier``.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import grpc
import jwt
import pytest_asyncio
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client import CollectorRegistry

from mercato.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from mercato_analytics.app import AnalyticsApp, build_app
from mercato_analytics.domain.errors import KafkaUnavailable
from mercato_analytics.positions import KafkaPositions
from mercato_analytics.samples import Expected, Published
from mercato_analytics.settings import AnalyticsSettings
from mercato_common.identity import JwksTokenVerifier
from mercato_common.kafka import Envelope, KafkaConnection, envelope_header_map, map_to_headers
from mercato_common.runtime import start_all, stop_all
from mercato_devstack.fixtures import (
    backends,
    kafka_bootstrap,
    kafka_topics,
    mongo_db_name,
    mongo_uri,
    topic_prefix,
)
from mercato_devstack.testing import TopicFactory

__all__ = [
    "backends",
    "kafka_bootstrap",
    "kafka_topics",
    "mongo_db_name",
    "mongo_uri",
    "topic_prefix",
]

ISSUER = "http://127.0.0.1:8080"
AUDIENCE = "mercato"
READ = "analytics:read"


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
class Env:
    """The test's topics, group and database: what a settings object or a subprocess needs."""

    bootstrap: str
    mongo_uri: str
    database: str
    auth: str
    catalog: str
    orders: str
    dlq: str
    group: str

    def topic(self, source: str) -> str:
        return {"auth": self.auth, "catalog": self.catalog, "orders": self.orders}[source]

    def settings(self, **overrides: Any) -> AnalyticsSettings:
        values: dict[str, Any] = {
            "grpc_port": 0,
            "mongo_uri": self.mongo_uri,
            "mongo_database": self.database,
            "kafka_bootstrap_servers": self.bootstrap,
            "auth_events_topic": self.auth,
            "catalog_events_topic": self.catalog,
            "orders_events_topic": self.orders,
            "dead_letter_topic": self.dlq,
            "consumer_group": self.group,
            "consumers": 2,
            "session_timeout_ms": 6000,
            "heartbeat_interval_ms": 1000,
            "retry_initial_seconds": 0.05,
            "retry_max_seconds": 0.2,
            "progress_flush_seconds": 0.1,
            "lag_refresh_seconds": 0,
            "lag_cache_seconds": 0,
            "shutdown_drain_seconds": 0,
            "shutdown_grace_seconds": 1,
            **overrides,
        }
        return AnalyticsSettings(**values)

    def environ(self, **overrides: str) -> dict[str, str]:
        """Environment of a ``python -m mercato_analytics`` subprocess for this test."""
        prefix = "MERCATO_ANALYTICS_"
        values = {
            "GRPC_PORT": "0",
            "METRICS_PORT": "0",
            "MONGO_URI": self.mongo_uri,
            "MONGO_DATABASE": self.database,
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap,
            "AUTH_EVENTS_TOPIC": self.auth,
            "CATALOG_EVENTS_TOPIC": self.catalog,
            "ORDERS_EVENTS_TOPIC": self.orders,
            "DEAD_LETTER_TOPIC": self.dlq,
            "CONSUMER_GROUP": self.group,
            "SESSION_TIMEOUT_MS": "6000",
            "HEARTBEAT_INTERVAL_MS": "1000",
            "LAG_REFRESH_SECONDS": "0",
            "PROGRESS_FLUSH_SECONDS": "0.2",
            "LOG_LEVEL": "WARNING",
            **overrides,
        }
        env = {k: v for k, v in os.environ.items() if not k.startswith(prefix)}
        env.update({prefix + name: value for name, value in values.items()})
        return env

    def connection(self) -> KafkaConnection:
        return KafkaConnection(bootstrap_servers=self.bootstrap)

    def positions(self) -> KafkaPositions:
        return KafkaPositions(
            self.connection(),
            group_id=self.group,
            topics=(self.auth, self.catalog, self.orders),
            cache_seconds=0,
        )


class Publisher:
    """Publishes envelopes as the outbox relays do (key = subject, envelope headers)."""

    def __init__(self, env: Env, producer: AIOKafkaProducer) -> None:
        self.env = env
        self._producer = producer

    async def send(
        self, source: str, envelope: Envelope | bytes, *, partition: int | None = None
    ) -> None:
        await self.send_all([(source, envelope)], partition=partition)

    async def send_all(
        self,
        items: Iterable[tuple[str, Envelope | bytes] | Published],
        *,
        partition: int | None = None,
    ) -> None:
        futures = []
        for item in items:
            source, envelope = (item.source, item.envelope) if isinstance(item, Published) else item
            if isinstance(envelope, bytes):
                value, key, headers = envelope, b"junk", []
            else:
                value = envelope.SerializeToString()
                key = envelope.subject.encode()
                headers = map_to_headers(envelope_header_map(envelope))
            futures.append(
                await self._producer.send(
                    self.env.topic(source), value, key=key, headers=headers, partition=partition
                )
            )
        await asyncio.gather(*futures)


async def wait_caught_up(env: Env, *, within: float = 60.0, settle: float = 0.3) -> None:
    """Until the group has committed every partition up to its end (effects are done)."""
    positions = env.positions()
    deadline = time.monotonic() + within
    try:
        while True:
            try:
                lag = sum(end - committed for _, _, committed, end in await positions.read())
            except KafkaUnavailable:
                # A fresh broker has no group coordinator for a moment (__consumer_offsets is
                # being created): the lag is unknown yet, not zero.
                lag = -1
            if lag == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"consumers still {lag} records behind after {within}s")
            await asyncio.sleep(0.1)
    finally:
        await positions.stop()
    await asyncio.sleep(settle)  # the progress flush (freshness) runs every 0.1 s


async def read_topic(bootstrap: str, topic: str, count: int, within: float = 20.0) -> list[Any]:
    """The first ``count`` records of a one-partition topic (e.g. the dead-letter topic)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    records: list[Any] = []
    try:
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        deadline = time.monotonic() + within
        while len(records) < count and time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=500)
            records.extend(batch.get(tp, []))
    finally:
        await consumer.stop()
    return records


async def reset_group(env: Env, offsets: Mapping[TopicPartition, int] | None = None) -> None:
    """Commit ``offsets`` (default: 0 everywhere) for the group, as an operator would."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=env.bootstrap, group_id=env.group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        if offsets is None:
            partitions = [
                TopicPartition(topic, p)
                for topic in (env.auth, env.catalog, env.orders)
                for p in range(6)
            ]
            offsets = dict.fromkeys(partitions, 0)
        consumer.assign(list(offsets))
        await consumer.commit(dict(offsets))
    finally:
        await consumer.stop()


@dataclass
class Analytics:
    app: AnalyticsApp
    stub: analytics_pb2_grpc.AnalyticsServiceAsyncStub
    channel: grpc.aio.Channel
    keys: Keys

    def auth(self, scope: str = READ) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.keys.token(scope)}")]

    async def summary(
        self, start: datetime, end: datetime, bucket: int, currency: str = ""
    ) -> analytics_pb2.GetSalesSummaryResponse:
        request = analytics_pb2.GetSalesSummaryRequest(bucket=bucket, currency_code=currency)
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(end)
        response: analytics_pb2.GetSalesSummaryResponse = await self.stub.GetSalesSummary(
            request, metadata=self.auth()
        )
        return response

    async def top(
        self, start: datetime, end: datetime, rank_by: int, currency: str = "", limit: int = 0
    ) -> analytics_pb2.ListTopProductsResponse:
        request = analytics_pb2.ListTopProductsRequest(
            rank_by=rank_by, currency_code=currency, limit=limit
        )
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(end)
        response: analytics_pb2.ListTopProductsResponse = await self.stub.ListTopProducts(
            request, metadata=self.auth()
        )
        return response

    async def funnel(self, start: datetime, end: datetime) -> analytics_pb2.GetFunnelResponse:
        request = analytics_pb2.GetFunnelRequest()
        request.start_time.FromDatetime(start)
        request.end_time.FromDatetime(end)
        response: analytics_pb2.GetFunnelResponse = await self.stub.GetFunnel(
            request, metadata=self.auth()
        )
        return response

    async def freshness(self) -> analytics_pb2.GetFreshnessResponse:
        response: analytics_pb2.GetFreshnessResponse = await self.stub.GetFreshness(
            analytics_pb2.GetFreshnessRequest(), metadata=self.auth()
        )
        return response


AnalyticsFactory = Callable[..., Awaitable[Analytics]]


@pytest_asyncio.fixture(loop_scope="session")
async def env(
    kafka_bootstrap: str, kafka_topics: TopicFactory, mongo_uri: str, mongo_db_name: str
) -> Env:
    await kafka_topics.create_declared()
    name = kafka_topics.name
    return Env(
        bootstrap=kafka_bootstrap,
        mongo_uri=mongo_uri,
        database=mongo_db_name,
        auth=name("mercato.auth.events.v1"),
        catalog=name("mercato.catalog.events.v1"),
        orders=name("mercato.orders.events.v1"),
        dlq=name("mercato.analytics.dlq.v1"),
        group=name("mercato.analytics"),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def publisher(env: Env) -> AsyncIterator[Publisher]:
    producer = AIOKafkaProducer(bootstrap_servers=env.bootstrap, acks="all", linger_ms=5)
    await producer.start()
    try:
        yield Publisher(env, producer)
    finally:
        await producer.stop()


@pytest_asyncio.fixture(loop_scope="session")
async def make_analytics(env: Env) -> AsyncIterator[AnalyticsFactory]:
    started: list[tuple[AnalyticsApp, grpc.aio.Channel]] = []

    async def factory(**overrides: Any) -> Analytics:
        keys = Keys()
        verifier = JwksTokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE)
        app = build_app(
            env.settings(**overrides), token_verifier=verifier, registry=CollectorRegistry()
        )
        await start_all(app.parts)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{app.server.port}")
        started.append((app, channel))
        stub = analytics_pb2_grpc.AnalyticsServiceStub(channel)
        return Analytics(app, stub, channel, keys)

    yield factory
    for app, channel in reversed(started):
        await channel.close()
        await stop_all(app.parts)


async def stop(analytics: Analytics) -> None:
    """Stop an app made by ``make_analytics`` early (the fixture's teardown then no-ops)."""
    await analytics.channel.close()
    await stop_all(analytics.app.parts)


def assert_totals(total: analytics_pb2.SalesBucket, expected: Expected) -> None:
    """Every figure of a summary's total equals the independently counted one."""
    assert total.orders_placed == expected.placed
    assert total.orders_paid == expected.paid
    assert total.orders_cancelled == expected.cancelled
    assert total.orders_fulfilled == expected.fulfilled
    assert total.orders_failed == expected.failed
    assert total.new_users == expected.new_users
    assert {s.revenue.currency_code: s.revenue.amount_minor for s in total.sales} == dict(
        expected.revenue
    )
    assert {s.revenue.currency_code: s.units for s in total.sales} == dict(expected.units)
    refunds = {s.refunds.currency_code: s.refunds.amount_minor for s in total.sales}
    assert {code: amount for code, amount in refunds.items() if amount} == dict(expected.refunds)


@dataclass
class Harness:
    """What a test needs, in one fixture (test modules cannot import from conftest)."""

    env: Env
    publisher: Publisher
    make: AnalyticsFactory

    async def wait_caught_up(self, within: float = 60.0) -> None:
        await wait_caught_up(self.env, within=within)

    async def read_dlq(self, count: int) -> list[Any]:
        return await read_topic(self.env.bootstrap, self.env.dlq, count)

    async def reset_group(self, offsets: Mapping[TopicPartition, int] | None = None) -> None:
        await reset_group(self.env, offsets)

    @staticmethod
    async def stop(analytics: Analytics) -> None:
        await stop(analytics)

    @staticmethod
    def assert_totals(total: analytics_pb2.SalesBucket, expected: Expected) -> None:
        assert_totals(total, expected)

    @staticmethod
    def command(*args: str) -> Sequence[str]:
        """``python -m mercato_analytics ...`` with this interpreter."""
        return [sys.executable, "-m", "mercato_analytics", *args]

    @staticmethod
    def now() -> datetime:
        return datetime.now(UTC)


@pytest_asyncio.fixture(loop_scope="session")
async def harness(env: Env, publisher: Publisher, make_analytics: AnalyticsFactory) -> Harness:
    return Harness(env, publisher, make_analytics)
