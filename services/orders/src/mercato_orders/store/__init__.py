"""Database access of the orders service: the pool, migrations and the repositories."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from importlib.resources.abc import Traversable

from mercato_common.kafka import Envelope
from mercato_common.outbox import enqueue
from mercato_common.postgres import Database, TracedConnection
from mercato_orders.store.keys import KeyRow, Keys, KeyState, new_token
from mercato_orders.store.orders import Orders, StaleOrderError

__all__ = [
    "TRACER_NAME",
    "Database",
    "KeyRow",
    "KeyState",
    "OrdersStore",
    "Outbox",
    "StaleOrderError",
    "Tx",
    "migrations_dir",
    "new_token",
]

# The tracer (and logger) name of the database spans.
TRACER_NAME = "mercato_orders.store"


def migrations_dir() -> Traversable:
    return files("mercato_orders.store") / "migrations"


class Outbox:
    """Events into the outbox table, in the transaction of the change they announce."""

    def __init__(self, conn: TracedConnection, topic: str) -> None:
        self._conn = conn
        self._topic = topic

    async def add(self, envelope: Envelope) -> None:
        await enqueue(self._conn.raw, envelope, self._topic)


class Tx:
    """The repositories on one connection (inside a transaction when opened by ``write``)."""

    def __init__(self, conn: TracedConnection, events_topic: str) -> None:
        self.conn = conn
        self.orders = Orders(conn)
        self.keys = Keys(conn)
        self.outbox = Outbox(conn, events_topic)


class OrdersStore:
    def __init__(self, database: Database, *, events_topic: str) -> None:
        self.database = database
        self._topic = events_topic

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Tx]:
        async with self.database.connection() as conn:
            yield Tx(conn, self._topic)

    @asynccontextmanager
    async def write(self) -> AsyncIterator[Tx]:
        async with self.database.transaction() as conn:
            yield Tx(conn, self._topic)
