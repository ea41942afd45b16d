"""The PostgreSQL plumbing without a database: spans of a traced connection, pool lifecycle."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from mercato_common.errors import Unavailable
from mercato_common.postgres import Database, TracedConnection


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


def _traced(conn: FakeConnection) -> tuple[TracedConnection, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return TracedConnection(conn, provider.get_tracer("mercato_test.store")), exporter


async def test_each_statement_gets_a_client_span_with_the_text_and_no_values() -> None:
    conn = FakeConnection()
    traced, exporter = _traced(conn)
    sql = "SELECT * FROM users WHERE email = $1"
    assert await traced.fetch("users.by_email", sql, "secret@example.com") == [1, 2]
    assert await traced.fetchrow("one", "SELECT 1") == {"a": 1}
    assert await traced.fetchval("val", "SELECT 7") == 7
    assert await traced.execute("upd", "UPDATE t SET a = $1", 1) == "UPDATE 1"
    await traced.executemany("many", "INSERT INTO t VALUES ($1)", [(1,), (2,)])
    assert [c[0] for c in conn.calls] == ["fetch", "fetchrow", "fetchval", "execute", "executemany"]
    assert traced.raw is conn
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == [
        "postgresql users.by_email",
        "postgresql one",
        "postgresql val",
        "postgresql upd",
        "postgresql many",
    ]
    first = spans[0]
    assert first.kind is SpanKind.CLIENT
    assert first.instrumentation_scope is not None
    assert first.instrumentation_scope.name == "mercato_test.store"
    assert dict(first.attributes or {}) == {
        "db.system.name": "postgresql",
        "db.operation.name": "users.by_email",
        "db.query.text": sql,
    }
    assert "secret@example.com" not in str(dict(first.attributes or {}))
    assert first.status.status_code is StatusCode.UNSET


async def test_a_failed_statement_marks_the_span_with_the_error_type_only() -> None:
    traced, exporter = _traced(FakeConnection(fail=RuntimeError("password=hunter2")))
    with pytest.raises(RuntimeError):
        await traced.execute("boom", "SELECT 1")
    (span,) = exporter.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    assert span.status.description == "RuntimeError"
    assert not span.events  # the exception (and its message) is not recorded


def _database(**options: Any) -> Database:
    return Database(
        "postgresql://u:pa55word@db/x",
        tracer_name="mercato_test.store",
        migrations=Path("/nonexistent"),
        **options,
    )


async def test_database_hands_out_traced_connections_and_transactions() -> None:
    database = _database()
    assert "pa55word" not in repr(database)
    with pytest.raises(RuntimeError, match="not started"):
        _ = database.pool
    conn = FakeConnection()
    pool = FakePool(conn)
    database._pool = pool
    async with database.connection() as traced:
        assert isinstance(traced, TracedConnection)
        assert traced.raw is conn
    async with database.transaction() as traced:
        assert traced.raw is conn
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
        async with database.connection() as traced:
            await traced.fetch("x", "SELECT 1")
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
