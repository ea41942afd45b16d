"""Wiring: the one place that creates clients and connects the catalog's parts.

Parts, started in this order and stopped in reverse by ``run_until_signal``:
MongoDB (ping, server detection, indexes) → Redis cache client → outbox relays (Kafka) →
reservation sweeper → gRPC server.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mercato.catalog.v1 import catalog_pb2_grpc
from mercato_catalog.api import SERVICE_NAME, CatalogServicer
from mercato_catalog.cache import CacheMetrics, ProductCache
from mercato_catalog.settings import CatalogSettings
from mercato_catalog.store import (
    INDEXES,
    CategoryStore,
    ProductStore,
    ReservationStore,
    StoreContext,
    WriteLocks,
)
from mercato_catalog.sweeper import ReservationSweeper
from mercato_common.identity import TokenVerifier, verifier_from_auth
from mercato_common.kafka.producer import EventProducer, KafkaConnection
from mercato_common.mongo import ensure_indexes
from mercato_common.outbox import MongoOutboxRelay, RelayRunner
from mercato_common.runtime import CloseOnStop, Lifecycle
from mercato_common.saturation import MongoPoolMonitor, SaturationMetrics
from mercato_common.server import GrpcServer

__all__ = ["CatalogApp", "build_app", "is_ferretdb"]

log = logging.getLogger("mercato_catalog.app")


async def is_ferretdb(client: AsyncMongoClient[Any]) -> bool:
    """Whether the server is FerretDB (its buildInfo carries ``ferretdbVersion``)."""
    info: Mapping[str, Any] = await client.admin.command("buildInfo")
    return "ferretdbVersion" in info or "ferretdb" in info


class MongoPart:
    """Checks the connection, picks the write-lock mode and creates the indexes."""

    def __init__(self, client: AsyncMongoClient[Any], ctx: StoreContext, mode: str) -> None:
        self._client = client
        self._ctx = ctx
        self._mode = mode

    async def start(self) -> None:
        await self._client.admin.command("ping")
        if self._mode == "auto":
            self._ctx.locks.enabled = await is_ferretdb(self._client)
        else:
            self._ctx.locks.enabled = self._mode == "on"
        created = await ensure_indexes(self._ctx.db, INDEXES)
        log.info(
            "mongodb ready",
            extra={"write_locks": self._ctx.locks.enabled, "indexes_created": created},
        )

    async def stop(self) -> None:
        await self._client.close()


@dataclass
class CatalogApp:
    settings: CatalogSettings
    server: GrpcServer
    servicer: CatalogServicer
    ctx: StoreContext
    products: ProductStore
    categories: CategoryStore
    reservations: ReservationStore
    cache: ProductCache
    sweeper: ReservationSweeper
    relays: RelayRunner[MongoOutboxRelay]
    mongo: AsyncMongoClient[Any]
    redis: Redis | None
    parts: list[Lifecycle] = field(default_factory=list)


def build_app(
    settings: CatalogSettings,
    *,
    token_verifier: TokenVerifier | None = None,
    registry: CollectorRegistry = REGISTRY,
) -> CatalogApp:
    """Build every part of the catalog from ``settings``; nothing connects until started."""
    saturation = SaturationMetrics(registry)
    pool_monitor = MongoPoolMonitor()
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(
        settings.mongo_uri,
        event_listeners=[pool_monitor],
        tz_aware=True,
        serverSelectionTimeoutMS=settings.mongo_timeout_ms,
        connectTimeoutMS=settings.mongo_timeout_ms,
        appname="mercato-catalog",
    )
    saturation.watch_mongo("mongodb", pool_monitor, mongo.options.pool_options.max_pool_size)
    ctx = StoreContext(
        db=mongo[settings.mongo_database],
        topic=settings.events_topic,
        locks=WriteLocks(enabled=settings.write_locks == "on"),
        low_stock_threshold=settings.low_stock_threshold,
    )
    redis: Redis | None = None
    if settings.redis_url:
        timeout = settings.redis_timeout_ms / 1000
        redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            health_check_interval=0,
        )
    cache = ProductCache(
        redis,
        prefix=settings.redis_prefix,
        ttl_seconds=settings.cache_ttl_seconds,
        breaker_seconds=settings.cache_breaker_seconds,
        metrics=CacheMetrics(registry),
    )
    ctx.on_product_written = cache.invalidate
    categories = CategoryStore(ctx)
    products = ProductStore(ctx, categories)
    reservations = ReservationStore(
        ctx,
        products,
        ttl=timedelta(seconds=settings.reservation_ttl_seconds),
        return_marker_retention=timedelta(seconds=settings.return_marker_retention_seconds),
    )
    producer = EventProducer(
        KafkaConnection(bootstrap_servers=settings.kafka_bootstrap_servers, client_id="catalog")
    )
    saturation.watch_producer(producer)
    relays = RelayRunner(
        producer,
        [
            MongoOutboxRelay(
                collection,
                producer,
                poll_interval=settings.outbox_poll_seconds,
                registry=registry,
                # FerretDB: the relay's write must not race the catalog's own (store.locks).
                write_guard=functools.partial(ctx.locks.hold, collection.name),
            )
            for collection in (ctx.products, ctx.reservations)
        ],
        grace=5.0,
    )
    sweeper = ReservationSweeper(
        reservations,
        interval=settings.sweep_interval_seconds,
        stuck_after=timedelta(seconds=settings.stuck_after_seconds),
        orphan_grace=timedelta(seconds=settings.orphan_grace_seconds),
    )
    channel: grpc.aio.Channel | None = None
    if token_verifier is None:
        token_verifier, channel = verifier_from_auth(
            settings, auth_target=settings.auth_target, tls=settings.client_tls
        )
    server = GrpcServer(
        settings, error_domain="catalog.mercato", token_verifier=token_verifier, registry=registry
    )
    servicer = CatalogServicer(
        products=products, categories=categories, reservations=reservations, cache=cache
    )
    server.add_service(
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE_NAME
    )
    parts: list[Lifecycle] = [
        MongoPart(mongo, ctx, settings.write_locks),
        CloseOnStop(redis.aclose if redis is not None else None),
        CloseOnStop(channel.close if channel is not None else None),
        relays,
        sweeper,
        saturation,
        server,
    ]
    return CatalogApp(
        settings=settings,
        server=server,
        servicer=servicer,
        ctx=ctx,
        products=products,
        categories=categories,
        reservations=reservations,
        cache=cache,
        sweeper=sweeper,
        relays=relays,
        mongo=mongo,
        redis=redis,
        parts=parts,
    )
