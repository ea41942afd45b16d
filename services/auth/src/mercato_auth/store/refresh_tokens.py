"""SQL of the refresh tokens and their families."""

from __future__ import annotations

import uuid
from datetime import datetime

from mercato_auth.domain.scopes import format_scope, parse_scope
from mercato_auth.domain.tokens import RefreshTokenRecord
from mercato_common.postgres import Connection, affected_rows

__all__ = ["RefreshTokens"]


class RefreshTokens:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def create_family(
        self,
        family_id: str,
        *,
        user_id: str,
        client_id: str,
        scopes: frozenset[str] | None,
        now: datetime,
    ) -> None:
        await self._conn.execute(
            "INSERT INTO refresh_token_families (id, user_id, client_id, scope, create_time)"
            " VALUES ($1, $2, $3, $4, $5)",
            uuid.UUID(family_id),
            uuid.UUID(user_id),
            client_id,
            None if scopes is None else format_scope(scopes),
            now,
        )

    async def insert(
        self, token_id: str, *, family_id: str, token_hash: bytes, now: datetime, expire: datetime
    ) -> None:
        await self._conn.execute(
            "INSERT INTO refresh_tokens (id, family_id, token_hash, create_time, expire_time)"
            " VALUES ($1, $2, $3, $4, $5)",
            uuid.UUID(token_id),
            uuid.UUID(family_id),
            token_hash,
            now,
            expire,
        )

    async def find(
        self, token_hash: bytes, *, for_update: bool = False
    ) -> RefreshTokenRecord | None:
        lock = " FOR UPDATE OF t, f" if for_update else ""
        row = await self._conn.fetchrow(
            "SELECT t.id, t.family_id, f.user_id, f.client_id, t.expire_time, t.use_time,"  # noqa: S608
            " f.revoke_time, f.scope FROM refresh_tokens t"
            " JOIN refresh_token_families f ON f.id = t.family_id"
            f" WHERE t.token_hash = $1{lock}",
            token_hash,
        )
        if row is None:
            return None
        return RefreshTokenRecord(
            id=str(row["id"]),
            family_id=str(row["family_id"]),
            user_id=str(row["user_id"]),
            client_id=row["client_id"],
            expire_time=row["expire_time"],
            use_time=row["use_time"],
            family_revoke_time=row["revoke_time"],
            family_scopes=None if row["scope"] is None else parse_scope(row["scope"]),
        )

    async def mark_used(self, token_id: str, *, now: datetime, replaced_by: str) -> None:
        await self._conn.execute(
            "UPDATE refresh_tokens SET use_time = $2, replaced_by = $3 WHERE id = $1",
            uuid.UUID(token_id),
            now,
            uuid.UUID(replaced_by),
        )

    async def revoke_family(self, family_id: str, *, now: datetime, reason: str) -> bool:
        return await self._revoke_families("id", family_id, now, reason) > 0

    async def revoke_user(self, user_id: str, *, now: datetime, reason: str) -> int:
        return await self._revoke_families("user_id", user_id, now, reason)

    async def _revoke_families(self, column: str, value: str, now: datetime, reason: str) -> int:
        """Revoke the unrevoked families whose ``column`` is ``value``; how many there were."""
        # ``column`` is one of the two names above, never input.
        status = await self._conn.execute(
            "UPDATE refresh_token_families SET revoke_time = $2, revoke_reason = $3"  # noqa: S608
            f" WHERE {column} = $1 AND revoke_time IS NULL",
            uuid.UUID(value),
            now,
            reason,
        )
        return affected_rows(status)

    async def delete_expired(self, before: datetime, limit: int) -> int:
        """Tokens expired before ``before``, then families left without tokens."""
        status = await self._conn.execute(
            "DELETE FROM refresh_tokens WHERE id IN (SELECT id FROM refresh_tokens"
            " WHERE expire_time < $1 LIMIT $2)",
            before,
            limit,
        )
        await self._conn.execute(
            "DELETE FROM refresh_token_families f WHERE f.create_time < $1 AND NOT EXISTS"
            " (SELECT 1 FROM refresh_tokens t WHERE t.family_id = f.id)",
            before,
        )
        return affected_rows(status)
