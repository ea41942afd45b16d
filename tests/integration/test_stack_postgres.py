"""PostgreSQL round trips through asyncpg against the real server."""

from __future__ import annotations

import asyncpg
import pytest

from mercato_devstack.testing import Backends

pytestmark = pytest.mark.integration


class Boom(Exception):
    pass


async def test_transaction_commit_is_visible_and_rollback_is_not(postgres_dsn: str) -> None:
    writer = await asyncpg.connect(postgres_dsn)
    reader = await asyncpg.connect(postgres_dsn)
    try:
        await writer.execute(
            "CREATE TABLE orders (id bigint PRIMARY KEY, total_minor bigint NOT NULL)"
        )

        async with writer.transaction():
            await writer.execute("INSERT INTO orders VALUES (1, 1250)")
            # Not committed yet: another session does not see it.
            assert await reader.fetchval("SELECT count(*) FROM orders") == 0
        assert await reader.fetchval("SELECT total_minor FROM orders WHERE id = 1") == 1250

        async def write_then_fail() -> None:
            async with writer.transaction():
                await writer.execute("INSERT INTO orders VALUES (2, 990)")
                await writer.execute("UPDATE orders SET total_minor = 0 WHERE id = 1")
                raise Boom

        with pytest.raises(Boom):
            await write_then_fail()
        rows = await reader.fetch("SELECT id, total_minor FROM orders ORDER BY id")
        assert [tuple(row) for row in rows] == [(1, 1250)]

        # A constraint violation aborts the whole transaction, the first insert included.
        async def insert_duplicate() -> None:
            async with writer.transaction():
                await writer.execute("INSERT INTO orders VALUES (3, 10)")
                await writer.execute("INSERT INTO orders VALUES (1, 10)")

        with pytest.raises(asyncpg.UniqueViolationError):
            await insert_duplicate()
        assert await reader.fetchval("SELECT count(*) FROM orders") == 1
    finally:
        await writer.close()
        await reader.close()


async def test_each_test_gets_its_own_database(postgres_dsn: str, postgres_admin_dsn: str) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        name = await conn.fetchval("SELECT current_database()")
        assert name.startswith("test_")
        assert (
            await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'") == 0
        )
    finally:
        await conn.close()
    admin = await asyncpg.connect(postgres_admin_dsn)
    try:
        assert await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name) == 1
    finally:
        await admin.close()


async def test_service_databases_exist_on_the_local_stack(backends: Backends) -> None:
    if backends.sources["postgres"] != "local":
        pytest.skip("the service databases are created by the local stack only")
    for database in ("auth", "orders"):
        conn = await asyncpg.connect(backends.postgres_dsn.rsplit("/", 1)[0] + f"/{database}")
        try:
            assert await conn.fetchval("SELECT current_user") == "mercato"
        finally:
            await conn.close()
