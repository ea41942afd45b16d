"""Database access of the orders service: the pool, migrations and the repositories."""

from __future__ import annotations

from mercato_common.outbox import Outbox
from mercato_common.postgres import Connection, Database, Store
from mercato_orders.store.keys import KeyRow, Keys, KeyState, new_token
from mercato_orders.store.orders import Orders, StaleOrderError
from mercato_orders.store.placement import Placements

__all__ = [
    "Database",
    "KeyRow",
    "KeyState",
    "OrdersStore",
    "Outbox",
    "StaleOrderError",
    "Tx",
    "new_token",
]


class Tx:
    """The repositories on one connection (inside a transaction when opened by ``write``)."""

    def __init__(self, conn: Connection, events_topic: str) -> None:
        self.conn = conn
        self.orders = Orders(conn)
        self.keys = Keys(conn)
        self.outbox = Outbox(conn, events_topic)
        self.placements = Placements(conn, self.outbox)


class OrdersStore(Store[Tx]):
    def __init__(self, database: Database, *, events_topic: str) -> None:
        super().__init__(database, lambda conn: Tx(conn, events_topic))
