"""The migration runner against real PostgreSQL, and ensure_indexes against the MongoDB server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from mercato_common.migrations import ChecksumMismatchError, MigrationError, migrate
from mercato_common.mongo import IndexConflictError, IndexSpec, ensure_indexes

pytestmark = pytest.mark.integration

FILES = {
    "0001_create_orders.sql": """
        CREATE TABLE orders (id bigint PRIMARY KEY, status text NOT NULL);
        CREATE TABLE order_lines (order_id bigint REFERENCES orders (id), sku text NOT NULL);
    """,
    "0002_add_total.sql": "ALTER TABLE orders ADD COLUMN total_minor bigint NOT NULL DEFAULT 0;",
    "0003_index_status.sql": (
        "-- mercato:no-transaction\nCREATE INDEX CONCURRENTLY orders_status_idx ON orders (status);"
    ),
}


def write(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


async def test_concurrent_runners_apply_each_file_once(postgres_dsn: str, tmp_path: Path) -> None:
    migrations = write(tmp_path / "m", FILES)
    conns = [await asyncpg.connect(postgres_dsn) for _ in range(4)]
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(migrate(conn, migrations) for conn in conns)), 60
        )
        # Exactly one runner applied everything; the others waited and found nothing to do.
        assert sorted(len(applied) for applied in results) == [0, 0, 0, 3]
        rows = await conns[0].fetch(
            "SELECT version, name, length(checksum) AS n FROM schema_migrations ORDER BY version"
        )
        assert [(r["version"], r["name"], r["n"]) for r in rows] == [
            (1, "create_orders", 64),
            (2, "add_total", 64),
            (3, "index_status", 64),
        ]
        assert await conns[0].fetchval("SELECT to_regclass('orders_status_idx') IS NOT NULL")
        await conns[0].execute("INSERT INTO orders (id, status) VALUES (1, 'PENDING')")
        assert await conns[0].fetchval("SELECT total_minor FROM orders") == 0

        # A rerun is a no-op; a new file is applied on its own.
        assert await migrate(conns[1], migrations) == []
        write(migrations, {"0004_notes.sql": "ALTER TABLE orders ADD COLUMN note text;"})
        assert [m.version for m in await migrate(conns[2], migrations)] == [4]
        # The lock is released after each run.
        assert not await conns[0].fetchval(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())"
        )
    finally:
        for conn in conns:
            await conn.close()


async def test_failed_file_leaves_no_trace_and_edits_are_refused(
    postgres_dsn: str, tmp_path: Path
) -> None:
    migrations = write(
        tmp_path / "m",
        {
            "0001_ok.sql": "CREATE TABLE a (id int);",
            "0002_broken.sql": "CREATE TABLE b (id int); INSERT INTO nowhere VALUES (1);",
        },
    )
    conn = await asyncpg.connect(postgres_dsn)
    try:
        with pytest.raises(MigrationError, match="0002_broken failed"):
            await migrate(conn, migrations)
        # 0001 committed; 0002 rolled back entirely (its table too) and is not recorded.
        assert await conn.fetchval("SELECT to_regclass('a') IS NOT NULL")
        assert await conn.fetchval("SELECT to_regclass('b') IS NULL")
        assert await conn.fetchval("SELECT max(version) FROM schema_migrations") == 1

        write(migrations, {"0002_broken.sql": "CREATE TABLE b (id int);"})
        assert [m.version for m in await migrate(conn, migrations)] == [2]

        write(migrations, {"0001_ok.sql": "CREATE TABLE a (id bigint);"})
        with pytest.raises(ChecksumMismatchError, match="0001_ok was changed"):
            await migrate(conn, migrations)
        assert not conn.is_in_transaction()
    finally:
        await conn.close()


@pytest_asyncio.fixture(loop_scope="session")
async def mongo(mongo_uri: str, mongo_db_name: str) -> AsyncIterator[AsyncDatabase[Any]]:
    client: AsyncMongoClient[Any] = AsyncMongoClient(mongo_uri, serverSelectionTimeoutMS=10_000)
    try:
        yield client[mongo_db_name]
    finally:
        await client.close()


async def test_ensure_indexes_is_idempotent_and_reports_conflicts(
    mongo: AsyncDatabase[Any],
) -> None:
    specs = {
        "products": [
            IndexSpec.of("by_sku", "sku", unique=True),
            IndexSpec.of("by_category_price", "category", ("price", -1)),
        ],
        "stock": [IndexSpec.of("by_product", "product_id")],
    }
    created = await ensure_indexes(mongo, specs)
    assert sorted(created) == [
        "products.by_category_price",
        "products.by_sku",
        "stock.by_product",
    ]
    # Again, from several "replicas" at once: nothing to do, no error.
    again = await asyncio.gather(*(ensure_indexes(mongo, specs) for _ in range(3)))
    assert again == [[], [], []]

    info = await mongo["products"].index_information()
    assert info["by_sku"]["key"] == [("sku", 1)]
    assert info["by_sku"].get("unique") is True
    await mongo["products"].insert_one({"sku": "A-1"})
    with pytest.raises(Exception, match="duplicate key"):
        await mongo["products"].insert_one({"sku": "A-1"})

    with pytest.raises(IndexConflictError, match="by_sku"):
        await ensure_indexes(mongo, {"products": [IndexSpec.of("by_sku", "sku")]})
    # Same keys under another name: the server refuses, reported the same way.
    with pytest.raises(IndexConflictError):
        await ensure_indexes(mongo, {"stock": [IndexSpec.of("other_name", "product_id")]})
