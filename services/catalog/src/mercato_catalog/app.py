"""The catalog service, declared for the kit (``mercato_common.kit``).

Its parts, in start order: MongoDB (ping, server detection for the write locks, indexes), the
Redis cache client, the auth channel (JWKS), the outbox relays (products, reservations), the
reservation sweeper, then what the kit adds to every service (saturation metrics, the gRPC
server, the health watch).

Layers, each only calling the ones below it: the servicer (``api``) and the sweeper (``jobs``)
→ the use cases (``service``) → the store, the read cache and the event builders (``store``,
``cache``, ``publish``) → the rules (``domain``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Unpack

from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from mercato.catalog.v1 import catalog_pb2_grpc
from mercato_catalog.api import SERVICE_NAME, CatalogServicer
from mercato_catalog.cache import CacheMetrics, ProductCache
from mercato_catalog.convert import encode_product
from mercato_catalog.jobs import ReservationSweeper
from mercato_catalog.service.categories import CategoryService
from mercato_catalog.service.products import ProductService
from mercato_catalog.service.reservations import ReservationService
from mercato_catalog.service.stock import StockMovements
from mercato_catalog.service.upkeep import ReservationUpkeep
from mercato_catalog.settings import CatalogSettings
from mercato_catalog.store import (
    INDEXES,
    RETIRED_INDEXES,
    CategoryStore,
    ProductStore,
    ReservationStore,
    StockStore,
    StoreContext,
    WriteLocks,
)
from mercato_common.kit import App, Definition, KitOptions, Service
from mercato_common.outbox import MongoOutboxRelay, RelayRunner
from mercato_common.redis_client import fail_fast_redis
from mercato_common.runtime import CloseOnStop

__all__ = ["DEFINITION", "CatalogApp", "build_app", "is_ferretdb"]

log = logging.getLogger("mercato_catalog.app")


async def is_ferretdb(client: AsyncMongoClient[Any]) -> bool:
    """Whether the server is FerretDB (its buildInfo carries ``ferretdbVersion``)."""
    info: Mapping[str, Any] = await client.admin.command("buildInfo")
    return "ferretdbVersion" in info or "ferretdb" in info


@dataclass
class CatalogApp(App):
    """The declared service and the objects its tests reach."""

    servicer: CatalogServicer
    ctx: StoreContext
    products: ProductService
    categories: CategoryService
    reservations: ReservationService
    stock: StockMovements
    upkeep: ReservationUpkeep
    cache: ProductCache
    sweeper: ReservationSweeper
    relays: RelayRunner[MongoOutboxRelay] | None
    mongo: AsyncMongoClient[Any]
    redis: Redis | None


def build_app(settings: CatalogSettings, **options: Unpack[KitOptions]) -> CatalogApp:
    """Declare every part of the catalog from ``settings``; nothing connects until started."""
    kit = Service(settings, **options)
    locks = WriteLocks(enabled=settings.write_locks == "on")

    async def on_connect(client: AsyncMongoClient[Any]) -> None:
        if settings.write_locks == "auto":
            locks.enabled = await is_ferretdb(client)
        log.info("write locks %s", "on" if locks.enabled else "off")
        # Sagas released by an older catalog carry no `cleanup` flag: flag them (a no-op after).
        flagged = await sagas.mark_pending_cleanups()
        if flagged:
            log.info("flagged %d pending reservation clean-ups", flagged)
        # Sagas stored by an older catalog carry no `create_minute`: add it (a no-op after).
        dated = await sagas.add_create_minutes()
        if dated:
            log.info("added the creation minute of %d reservations", dated)
        # Products holding units stored by an older catalog carry no `holding` mark: add it.
        marked = await stock_store.mark_holding()
        if marked:
            log.info("marked %d products holding reserved units", marked)

    mongo = kit.mongo(
        settings, indexes=INDEXES, retired_indexes=RETIRED_INDEXES, on_connect=on_connect
    )
    ctx = StoreContext(db=mongo.db, topic=settings.events_topic, locks=locks)
    redis: Redis | None = None
    if settings.redis_url:
        redis = fail_fast_redis(settings.redis_url, timeout_ms=settings.redis_timeout_ms)
        # Redis may be down at start: the cache falls back, so only close it on stop.
        kit.part(CloseOnStop(redis.aclose))
    cache = ProductCache(
        redis,
        prefix=settings.redis_prefix,
        ttl_seconds=settings.cache_ttl_seconds,
        breaker_seconds=settings.cache_breaker_seconds,
        metrics=CacheMetrics(kit.registry),
    )
    product_store, stock_store, sagas = ProductStore(ctx), StockStore(ctx), ReservationStore(ctx)
    categories = CategoryService(CategoryStore(ctx))
    products = ProductService(
        product_store,
        categories,
        cache,
        encode=encode_product,
        low_stock_threshold=settings.low_stock_threshold,
    )
    stock = StockMovements(stock_store, cache, low_stock_threshold=settings.low_stock_threshold)
    reservations = ReservationService(
        sagas,
        stock,
        product_store,
        ttl=timedelta(seconds=settings.reservation_ttl_seconds),
        return_marker_retention=timedelta(seconds=settings.return_marker_retention_seconds),
    )
    upkeep = ReservationUpkeep(sagas, reservations, stock, stock_store)
    # FerretDB: the relays' writes must not race the catalog's own (store.locks).
    relays = kit.mongo_outbox([ctx.products, ctx.reservations], settings, write_guard=locks.hold)
    if relays is not None:
        ctx.on_events = relays.wake
    sweeper = ReservationSweeper(
        upkeep,
        interval=settings.sweep_interval_seconds,
        stuck_after=timedelta(seconds=settings.stuck_after_seconds),
        orphan_grace=timedelta(seconds=settings.orphan_grace_seconds),
    )
    kit.job(sweeper)
    kit.verify_tokens_with_auth(settings.auth_target)
    servicer = CatalogServicer(products=products, categories=categories, reservations=reservations)
    kit.serve(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE_NAME)
    return CatalogApp(
        kit=kit,
        servicer=servicer,
        ctx=ctx,
        products=products,
        categories=categories,
        reservations=reservations,
        stock=stock,
        upkeep=upkeep,
        cache=cache,
        sweeper=sweeper,
        relays=relays,
        mongo=mongo.client,
        redis=redis,
    )


DEFINITION = Definition("catalog", CatalogSettings, build_app)
