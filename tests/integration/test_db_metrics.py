"""Store round trips counted on real servers: every statement and every command, by kind."""

from __future__ import annotations

import asyncio
from importlib.resources import files
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pymongo import AsyncMongoClient
from pymongo.errors import DuplicateKeyError

from mercato_common.db_metrics import DbOperationMetrics
from mercato_common.mongo import MongoCommandMetrics
from mercato_common.postgres import Database

pytestmark = pytest.mark.integration

METRIC = "db_client_operation_duration_seconds_count"


def _count(registry: CollectorRegistry, system: str, operation: str) -> float:
    labels = {"db_system_name": system, "db_operation_name": operation}
    return registry.get_sample_value(METRIC, labels) or 0.0


async def _settled() -> None:
    # asyncpg hands each finished statement to the loggers with call_soon.
    await asyncio.sleep(0)
    await asyncio.sleep(0)


async def test_every_postgres_statement_is_counted_by_kind(postgres_dsn: str) -> None:
    registry = CollectorRegistry()
    metrics = DbOperationMetrics.for_registry(registry)
    database = Database(
        postgres_dsn,
        logger_name="mercato_test.store",
        migrations=files("mercato_common"),  # no migrations there
        migrate_on_start=False,
        query_logger=metrics.postgres_logger(),
    )
    await database.start()
    try:
        async with database.transaction() as tx:
            await tx.execute("CREATE TABLE counted (id int PRIMARY KEY)")
            await tx.executemany("INSERT INTO counted VALUES ($1)", [(1,), (2,), (3,)])
        async with database.connection() as conn:
            # The pool's raw connection, as the outbox relay uses it, is counted too.
            assert await conn.fetchval("SELECT count(*) FROM counted") == 3
            await conn.execute("\n  WITH gone AS (DELETE FROM counted RETURNING 1) SELECT 1")
        await _settled()
    finally:
        await database.stop()
    assert _count(registry, "postgresql", "BEGIN") == 1
    assert _count(registry, "postgresql", "COMMIT") == 1
    assert _count(registry, "postgresql", "CREATE") == 1
    assert _count(registry, "postgresql", "INSERT") == 1  # executemany is one round trip
    # The one SELECT above: a connection goes back to the pool without a reset query.
    assert _count(registry, "postgresql", "SELECT") == 1
    assert _count(registry, "postgresql", "WITH") == 1


async def test_a_connection_left_in_a_transaction_comes_back_rolled_back(
    postgres_dsn: str,
) -> None:
    database = Database(
        postgres_dsn,
        logger_name="mercato_test.store",
        migrations=files("mercato_common"),
        migrate_on_start=False,
        min_size=1,
        max_size=1,
    )
    await database.start()
    try:
        async with database.connection() as conn:
            await conn.execute("CREATE TABLE kept (id int)")
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO kept VALUES (1)")
        async with database.connection() as conn:  # the same, single pooled connection
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT count(*) FROM kept") == 0
    finally:
        await database.stop()


async def test_every_mongo_command_is_counted_by_name(mongo_uri: str, mongo_db_name: str) -> None:
    registry = CollectorRegistry()
    listener = MongoCommandMetrics(DbOperationMetrics.for_registry(registry))
    client: AsyncMongoClient[Any] = AsyncMongoClient(
        mongo_uri, event_listeners=[listener], serverSelectionTimeoutMS=10_000
    )
    try:
        items = client[mongo_db_name]["items"]
        await items.insert_one({"_id": "a", "n": 1})
        await items.find_one_and_update({"_id": "a"}, {"$inc": {"n": 1}})
        assert [doc["n"] async for doc in items.find({})] == [2]
        with pytest.raises(DuplicateKeyError):
            await items.insert_one({"_id": "a"})  # a refused write is a round trip as well
    finally:
        await client.close()
    assert _count(registry, "mongodb", "insert") == 2
    assert _count(registry, "mongodb", "findAndModify") == 1
    assert _count(registry, "mongodb", "find") == 1
