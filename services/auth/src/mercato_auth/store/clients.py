"""SQL of the ``oauth_clients`` table (service clients)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from mercato_common.postgres import Connection

__all__ = ["ClientRecord", "Clients"]


@dataclass(frozen=True, slots=True)
class ClientRecord:
    client_id: str
    secret_hash: str = field(repr=False)
    scopes: frozenset[str]
    disabled: bool
    #: Secrets still accepted during a rotation (``previous_secrets`` of the client's seed).
    previous_secret_hashes: tuple[str, ...] = field(default=(), repr=False)


class Clients:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def get(self, client_id: str) -> ClientRecord | None:
        row = await self._conn.fetchrow(
            "SELECT client_id, secret_hash, scopes, disabled, previous_secret_hashes"
            " FROM oauth_clients"
            " WHERE client_id = $1",
            client_id,
        )
        if row is None:
            return None
        return ClientRecord(
            client_id=row["client_id"],
            secret_hash=row["secret_hash"],
            scopes=frozenset(row["scopes"]),
            disabled=row["disabled"],
            previous_secret_hashes=tuple(row["previous_secret_hashes"]),
        )

    async def upsert(
        self,
        client_id: str,
        secret_hash: str,
        scopes: Sequence[str],
        now: datetime,
        previous_secret_hashes: Sequence[str] = (),
    ) -> None:
        await self._conn.execute(
            "INSERT INTO oauth_clients (client_id, secret_hash, scopes, disabled, create_time,"
            " update_time, previous_secret_hashes) VALUES ($1, $2, $3, false, $4, $4, $5)"
            " ON CONFLICT (client_id) DO UPDATE SET secret_hash = EXCLUDED.secret_hash,"
            " scopes = EXCLUDED.scopes, disabled = false, update_time = EXCLUDED.update_time,"
            " previous_secret_hashes = EXCLUDED.previous_secret_hashes",
            client_id,
            secret_hash,
            list(scopes),
            now,
            list(previous_secret_hashes),
        )

    async def update_scopes(self, client_id: str, scopes: Sequence[str], now: datetime) -> None:
        await self._conn.execute(
            "UPDATE oauth_clients SET scopes = $2, disabled = false, update_time = $3"
            " WHERE client_id = $1",
            client_id,
            list(scopes),
            now,
        )
