"""The PostgreSQL plumbing without a database: the pool's lifecycle and its errors (the spans of
statements come from OpenTelemetry's asyncpg instrumentation: see
tests/integration/test_client_spans.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from mercato_common.errors import Unavailable
from mercato_common.postgres import Database


class FakeConnection:
    def __init__(self, *, fail: BaseException | None = None) -> None:
        self.calls: list[tuple[str, str, tuple[Any, ...]]] = []
        self.fail = fail
        self.transactions = 0

    async def _call(self, method: str, sql: str, args: tuple[Any, ...]) -> Any:
        self.calls.append((method, sql, args))
        if self.fail is not None:
            raise self.fail
        return {"fetch": [1, 2], "fetchrow": {"a": 1}, "fetchval": 7, "execute": "UPDATE 1"}.get(
            method
        )

    async def fetch(self, sql: str, *args: Any) -> Any:
        return await self._call("fetch", sql, args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._call("fetchrow", sql, args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call("fetchval", sql, args)

    async def execute(self, sql: str, *args: Any) -> Any:
        return await self._call("execute", sql, args)

    async def executemany(self, sql: str, args: list[tuple[Any, ...]]) -> Any:
        return await self._call("executemany", sql, tuple(args))

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        self.transactions += 1
        yield


class FakePool:
    def __init__(self, conn: FakeConnection, *, refuse: BaseException | None = None) -> None:
        self.conn = conn
        self.refuse = refuse
        self.timeouts: list[float | None] = []
        self.closed = False

    async def close(self) -> None:
        self.closed = True

    def acquire(self, timeout: float | None = None) -> Any:
        self.timeouts.append(timeout)

        @asynccontextmanager
        async def acquired() -> AsyncIterator[FakeConnection]:
            if self.refuse is not None:
                raise self.refuse
            yield self.conn

        return acquired()


def _database(**options: Any) -> Database:
    return Database(
        "postgresql://u:pa55word@db/x",
        logger_name="mercato_test.store",
        migrations=Path("/nonexistent"),
        **options,
    )


async def test_database_hands_out_pooled_connections_and_transactions() -> None:
    database = _database()
    assert "pa55word" not in repr(database)
    with pytest.raises(RuntimeError, match="not started"):
        _ = database.pool
    conn = FakeConnection()
    pool = FakePool(conn)
    database._pool = pool
    async with database.connection() as pooled:
        assert pooled is conn
    async with database.transaction() as pooled:
        assert pooled is conn
    assert conn.transactions == 1
    assert pool.timeouts == [None, None]
    await database.stop()
    assert pool.closed
    await database.stop()  # a second stop is a no-op
    with pytest.raises(RuntimeError, match="not started"):
        _ = database.pool


class StoreUnavailable(Unavailable):
    default_reason = "STORE_UNAVAILABLE"

    def __init__(self) -> None:
        super().__init__("the store is unavailable")


async def test_database_maps_unreachable_to_the_given_domain_error() -> None:
    database = _database(acquire_timeout=3.0, unavailable_error=StoreUnavailable)
    pool = FakePool(FakeConnection(), refuse=ConnectionRefusedError("down"))
    database._pool = pool
    with pytest.raises(StoreUnavailable) as caught:
        async with database.transaction():
            pass
    assert isinstance(caught.value.__cause__, ConnectionRefusedError)
    with pytest.raises(StoreUnavailable):
        async with database.connection() as pooled:
            await pooled.fetch("SELECT 1")
    assert pool.timeouts == [3.0, 3.0]
    # A connection the server dropped mid-operation counts as unreachable too.
    broken = asyncpg.exceptions.InternalClientError("cannot switch to state 12")
    with pytest.raises(StoreUnavailable):
        async with database.connection():
            raise broken
    # Other errors pass through untouched; without a mapping, so do unreachable ones.
    database._pool = FakePool(FakeConnection())
    with pytest.raises(KeyError):
        async with database.connection():
            raise KeyError("x")
    plain = _database()
    plain._pool = FakePool(FakeConnection(), refuse=TimeoutError())
    with pytest.raises(TimeoutError):
        async with plain.connection():
            pass
