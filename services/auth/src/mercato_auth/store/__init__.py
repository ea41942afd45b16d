"""Database access of the auth service: the pool, migrations and the repositories."""

from __future__ import annotations

from mercato_auth.store.clients import ClientRecord, Clients
from mercato_auth.store.refresh_tokens import RefreshTokens
from mercato_auth.store.signing_keys import SigningKeys, StoredSigningKey
from mercato_auth.store.throttle import Throttle
from mercato_auth.store.users import Users
from mercato_common.outbox import Outbox
from mercato_common.postgres import Connection, Database, Store

__all__ = [
    "AuthStore",
    "ClientRecord",
    "Database",
    "StoredSigningKey",
    "Tx",
]


class Tx:
    """The repositories on one connection (inside a transaction when opened by ``write``)."""

    def __init__(self, conn: Connection, events_topic: str) -> None:
        self.conn = conn
        self.users = Users(conn)
        self.clients = Clients(conn)
        self.refresh_tokens = RefreshTokens(conn)
        self.signing_keys = SigningKeys(conn)
        self.throttle = Throttle(conn)
        self.outbox = Outbox(conn, events_topic)


class AuthStore(Store[Tx]):
    def __init__(self, database: Database, *, events_topic: str) -> None:
        super().__init__(database, lambda conn: Tx(conn, events_topic))
