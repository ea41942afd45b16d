"""Saturation metrics against real pools: what the collector reports is what the pool holds."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient

from mercato_common.mongo import MongoPoolMonitor
from mercato_common.saturation import SaturationMetrics

pytestmark = pytest.mark.integration


def _connections(registry: CollectorRegistry, pool: str, state: str) -> float | None:
    return registry.get_sample_value("mercato_db_pool_connections", {"pool": pool, "state": state})


async def test_postgres_pool_connections_held_show_as_used(postgres_dsn: str) -> None:
    registry = CollectorRegistry()
    saturation = SaturationMetrics(registry)
    pool = await asyncpg.create_pool(postgres_dsn, min_size=1, max_size=4)
    saturation.watch_postgres("postgres", lambda: pool)
    try:
        async with pool.acquire() as first, pool.acquire() as second:
            await first.execute("SELECT 1")
            await second.execute("SELECT 1")
            assert _connections(registry, "postgres", "used") == 2
        assert _connections(registry, "postgres", "used") == 0
        assert (_connections(registry, "postgres", "idle") or 0) >= 2
        maximum = registry.get_sample_value("mercato_db_pool_max_connections", {"pool": "postgres"})
        assert maximum == 4
    finally:
        await pool.close()


async def test_mongo_pool_counts_follow_the_real_client(mongo_uri: str, mongo_db_name: str) -> None:
    registry = CollectorRegistry()
    saturation = SaturationMetrics(registry)
    monitor = MongoPoolMonitor()
    seen_used: list[int] = []

    class Sampler(MongoPoolMonitor):
        """Records the monitor's used count at each check-out (listeners run in order)."""

        def connection_checked_out(self, event: Any) -> None:
            seen_used.append(monitor.used)

    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri,
        event_listeners=[monitor, Sampler()],
        maxPoolSize=8,
        serverSelectionTimeoutMS=10_000,
    )
    saturation.watch_mongo("mongodb", monitor, client.options.pool_options.max_pool_size)
    try:
        collection = client[mongo_db_name]["saturation"]
        await asyncio.gather(*(collection.insert_one({"n": n}) for n in range(6)))
        assert seen_used
        assert min(seen_used) >= 1
        assert _connections(registry, "mongodb", "used") == 0
        assert (_connections(registry, "mongodb", "idle") or 0) >= 1
        maximum = registry.get_sample_value("mercato_db_pool_max_connections", {"pool": "mongodb"})
        assert maximum == 8
    finally:
        await client.close()
