"""PostgreSQL plumbing shared by the services that own a PostgreSQL database.

* :class:`Database` is the service's asyncpg pool as a lifecycle part: ``start`` connects and,
  unless told otherwise, applies the service's migrations (:mod:`mercato_common.migrations`);
  ``stop`` closes the pool.

A service passes its own logger name (``"mercato_orders.store"``) and its migrations directory
(``files("mercato_orders.store") / "migrations"``). Every statement gets a CLIENT span from
OpenTelemetry's asyncpg instrumentation when the process exports traces
(:func:`mercato_common.telemetry.instrument_client`): the statement text, never the values.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import KW_ONLY, dataclass, field
from importlib.resources import files
from importlib.resources.abc import Traversable
from typing import Any, Generic, TypeVar

import asyncpg

from mercato_common.migrations import Migration, load_migrations, migrate
from mercato_common.telemetry import instrument_client

__all__ = [
    "UNAVAILABLE_ERRORS",
    "Connection",
    "Database",
    "Store",
    "affected_rows",
    "outbox_migration",
    "run_migrations",
    "service_migrations",
]

# An asyncpg connection, as the stores receive it (asyncpg ships no type information).
Connection = Any

# Failures that mean "the database cannot be reached right now", not a bug (see
# ``Database(unavailable_error=...)``).
UNAVAILABLE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    # A pooled connection the server dropped mid-operation (a restart) can fail with "cannot
    # switch to state ...; another operation is in progress" instead of a connection error.
    asyncpg.exceptions.InternalClientError,
)


def affected_rows(status: str) -> int:
    """The number of rows a command touched, from the status ``execute`` returns
    (``"DELETE 3"``, ``"UPDATE 0"``)."""
    return int(status.rsplit(" ", 1)[-1])


def outbox_migration(version: int) -> Migration:
    """The outbox table (:mod:`mercato_common.outbox.postgres`) as migration ``version``.

    The SQL lives once, in the kit; a service that publishes events places it in its own history
    at the version it chose (``Database(outbox_migration=N)``). Its text never changes: a later
    change of the outbox table is a new migration.
    """
    sql = (files("mercato_common.outbox") / "outbox.sql").read_text(encoding="utf-8")
    return Migration.from_sql(version, "outbox", sql)


def service_migrations(
    directory: Traversable, *, outbox_version: int | None = None
) -> list[Migration]:
    """A service's migrations: the files of ``directory``, plus the kit's outbox at its version."""
    migrations = load_migrations(directory)
    if outbox_version is not None:
        migrations.append(outbox_migration(outbox_version))
    return sorted(migrations, key=lambda migration: migration.version)


async def run_migrations(
    conn: Any,
    directory: Traversable,
    *,
    outbox_version: int | None = None,
    logger: logging.Logger | None = None,
) -> list[Migration]:
    """Apply a service's migrations on ``conn``; log and return those applied."""
    log = logger or logging.getLogger(__name__)
    applied = await migrate(conn, service_migrations(directory, outbox_version=outbox_version))
    for migration in applied:
        log.info("applied migration %s", migration.label)
    return applied


async def _keep_session(conn: Any) -> None:
    """A connection goes back to the pool without asyncpg's reset query (advisory unlock all,
    CLOSE ALL, UNLISTEN *, RESET ALL): one round trip less per use. The services keep no
    session state on pooled connections (no SET; LISTEN only on the relay's own connection,
    which it UNLISTENs; the migrations' advisory lock is released explicitly), and asyncpg
    still rolls back a transaction left open before this is called."""
    del conn


@dataclass(eq=False, repr=False)
class Database:
    """The service's asyncpg pool (a lifecycle part: ``start`` connects and migrates).

    ``acquire_timeout`` bounds the wait for a pooled connection (no bound by default).
    ``unavailable_error``, when given, builds the domain error raised instead of one of
    :data:`UNAVAILABLE_ERRORS` inside :meth:`connection` / :meth:`transaction`.
    ``outbox_migration``, when given, is the version at which the kit's outbox table joins the
    service's migrations (see :func:`outbox_migration`). ``query_logger``, when given, is
    installed on every pooled connection (the kit passes the store-operation metrics).
    """

    dsn: str = field(repr=False)
    _: KW_ONLY
    logger_name: str
    migrations: Traversable
    min_size: int = 2
    max_size: int = 10
    command_timeout: float = 10.0
    migrate_on_start: bool = True
    acquire_timeout: float | None = None
    unavailable_error: Callable[[], BaseException] | None = None
    outbox_migration: int | None = None
    query_logger: Callable[[Any], None] | None = None
    _pool: Any = field(default=None, init=False)
    _probe: Any = field(default=None, init=False)

    def __repr__(self) -> str:  # the DSN may hold a password
        return f"Database(pool_size={self.min_size}..{self.max_size})"

    @property
    def _log(self) -> logging.Logger:
        return logging.getLogger(self.logger_name)

    @property
    def pool(self) -> Any:
        if self._pool is None:
            raise RuntimeError("the database is not started")
        return self._pool

    async def run_migrations(self, conn: Any) -> list[Migration]:
        """Apply this service's migrations on ``conn``."""
        return await run_migrations(
            conn, self.migrations, outbox_version=self.outbox_migration, logger=self._log
        )

    async def migrate(self) -> list[Migration]:
        """Apply the pending migrations on a connection of the pool (started or not)."""
        if self._pool is not None:
            async with self._pool.acquire() as conn:
                return await self.run_migrations(conn)
        conn = await asyncpg.connect(dsn=self.dsn, command_timeout=self.command_timeout)
        try:
            return await self.run_migrations(conn)
        finally:
            await conn.close()

    async def ping(self) -> None:
        """One round trip to the server (the health probe); raises when it is unreachable.

        The probe keeps a connection of its own, outside the pool: a pool busy with real work
        must not read as a database that is down (and take the replica out of its Service).
        """
        try:
            if self._probe is None or self._probe.is_closed():
                self._probe = await asyncpg.connect(
                    dsn=self.dsn,
                    timeout=self.command_timeout,
                    command_timeout=self.command_timeout,
                )
            await self._probe.fetchval("SELECT 1")
        except BaseException:
            await self._close_probe()
            raise

    async def _close_probe(self) -> None:
        probe, self._probe = self._probe, None
        if probe is not None:
            probe.terminate()

    async def start(self) -> None:
        instrument_client("asyncpg")
        self._pool = await asyncpg.create_pool(
            dsn=self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            command_timeout=self.command_timeout,
            init=self._init_connection,
            reset=_keep_session,
        )
        if self.migrate_on_start:
            async with self._pool.acquire() as conn:
                await self.run_migrations(conn)

    async def _init_connection(self, conn: Any) -> None:
        if self.query_logger is not None:
            conn.add_query_logger(self.query_logger)

    async def stop(self) -> None:
        await self._close_probe()
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def _acquire(self) -> Any:
        if self.acquire_timeout is None:
            return self.pool.acquire()
        return self.pool.acquire(timeout=self.acquire_timeout)

    @asynccontextmanager
    async def _unavailable_as_domain_error(self) -> AsyncIterator[None]:
        if self.unavailable_error is None:
            yield
            return
        try:
            yield
        except UNAVAILABLE_ERRORS as exc:
            raise self.unavailable_error() from exc

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        async with self._unavailable_as_domain_error(), self._acquire() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Connection]:
        async with (
            self._unavailable_as_domain_error(),
            self._acquire() as conn,
            conn.transaction(),
        ):
            yield conn


Tx = TypeVar("Tx")


class Store(Generic[Tx]):
    """A service's repositories on one connection: :meth:`read` outside a transaction,
    :meth:`write` inside one. ``tx(conn)`` builds the service's set of repositories (its ``Tx``)
    on the connection; unreachable-database errors become the service's own (see
    :class:`Database`)."""

    def __init__(self, database: Database, tx: Callable[[Connection], Tx]) -> None:
        self.database = database
        self._tx = tx

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        async with self.database.connection() as conn:
            yield self._tx(conn)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        async with self.database.transaction() as conn:
            yield self._tx(conn)
