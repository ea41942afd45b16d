"""The PostgreSQL connection pool, migrations, and traced query helpers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any

import asyncpg
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from mercato_common.migrations import Migration, migrate
from mercato_orders.domain.errors import OrdersUnavailable

__all__ = [
    "UNAVAILABLE_ERRORS",
    "Database",
    "TracedConnection",
    "migrations_dir",
    "run_migrations",
]

_log = logging.getLogger("mercato_orders.store")
_tracer = trace.get_tracer("mercato_orders.store")

# Failures that mean "the database cannot be reached right now", not a bug: they become
# UNAVAILABLE (ORDERS_UNAVAILABLE) instead of INTERNAL.
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
)


def migrations_dir() -> Traversable:
    return files("mercato_orders.store") / "migrations"


async def run_migrations(conn: Any) -> list[Migration]:
    applied = await migrate(conn, migrations_dir())
    for migration in applied:
        _log.info("applied migration %s", migration.label)
    return applied


class TracedConnection:
    """An asyncpg connection whose queries each get a CLIENT span (statement text, no values)."""

    def __init__(self, conn: Any) -> None:
        self.raw = conn

    @asynccontextmanager
    async def _span(self, name: str, sql: str) -> AsyncIterator[None]:
        with _tracer.start_as_current_span(
            f"postgresql {name}",
            kind=SpanKind.CLIENT,
            attributes={
                "db.system.name": "postgresql",
                "db.operation.name": name,
                "db.query.text": sql,
            },
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except Exception as exc:
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise

    async def fetch(self, name: str, sql: str, *args: Any) -> list[Any]:
        async with self._span(name, sql):
            rows: list[Any] = await self.raw.fetch(sql, *args)
            return rows

    async def fetchrow(self, name: str, sql: str, *args: Any) -> Any:
        async with self._span(name, sql):
            return await self.raw.fetchrow(sql, *args)

    async def fetchval(self, name: str, sql: str, *args: Any) -> Any:
        async with self._span(name, sql):
            return await self.raw.fetchval(sql, *args)

    async def execute(self, name: str, sql: str, *args: Any) -> str:
        async with self._span(name, sql):
            status: str = await self.raw.execute(sql, *args)
            return status

    async def executemany(self, name: str, sql: str, args: list[tuple[Any, ...]]) -> None:
        async with self._span(name, sql):
            await self.raw.executemany(sql, args)


class Database:
    """The service's asyncpg pool (a lifecycle part: ``start`` connects and migrates)."""

    def __init__(
        self,
        dsn: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        command_timeout: float = 10.0,
        migrate_on_start: bool = True,
    ) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._command_timeout = command_timeout
        self._migrate_on_start = migrate_on_start
        self._pool: Any = None

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"Database(pool_size={self._min_size}..{self._max_size})"

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the database is not started")
        return self._pool

    async def start(self) -> None:
        self._pool = await asyncpg.create_pool(
            dsn=self._dsn,
            min_size=self._min_size,
            max_size=self._max_size,
            command_timeout=self._command_timeout,
        )
        if self._migrate_on_start:
            async with self._pool.acquire() as conn:
                await run_migrations(conn)

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[TracedConnection]:
        try:
            async with self.pool.acquire(timeout=self._command_timeout) as conn:
                yield TracedConnection(conn)
        except UNAVAILABLE_ERRORS as exc:
            raise OrdersUnavailable() from exc

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[TracedConnection]:
        try:
            async with (
                self.pool.acquire(timeout=self._command_timeout) as conn,
                conn.transaction(),
            ):
                yield TracedConnection(conn)
        except UNAVAILABLE_ERRORS as exc:
            raise OrdersUnavailable() from exc
