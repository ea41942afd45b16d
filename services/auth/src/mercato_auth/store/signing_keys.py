"""SQL of the ``signing_keys`` table (private parts arrive and leave encrypted)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mercato_auth.domain.keys import KeyState, SigningKeyInfo
from mercato_common.migrations import advisory_lock_key
from mercato_common.postgres import Connection, affected_rows

__all__ = ["SigningKeys", "StoredSigningKey"]


@dataclass(frozen=True, slots=True)
class StoredSigningKey:
    info: SigningKeyInfo
    public_jwk: dict[str, str]
    private_key_enc: bytes = field(repr=False)
    kek_id: str


_KEY_COLUMNS = (
    "kid, alg, state, public_jwk::text AS public_jwk, private_key_enc, kek_id, create_time,"
    " activate_time, retire_time, publish_until"
)


def _stored_key(row: Any) -> StoredSigningKey:
    return StoredSigningKey(
        info=SigningKeyInfo(
            kid=row["kid"],
            alg=row["alg"],
            state=KeyState(row["state"]),
            create_time=row["create_time"],
            activate_time=row["activate_time"],
            retire_time=row["retire_time"],
            publish_until=row["publish_until"],
        ),
        public_jwk=json.loads(row["public_jwk"]),
        private_key_enc=bytes(row["private_key_enc"]),
        kek_id=row["kek_id"],
    )


class SigningKeys:
    _LOCK = advisory_lock_key("mercato_auth", "signing_keys")

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def lock(self) -> None:
        """Serialise key changes across replicas for the rest of the transaction."""
        await self._conn.execute("SELECT pg_advisory_xact_lock($1)", self._LOCK)

    async def live(self) -> dict[KeyState, StoredSigningKey]:
        """The active and next keys, by state."""
        rows = await self._conn.fetch(
            f"SELECT {_KEY_COLUMNS} FROM signing_keys WHERE state IN ('active', 'next')",  # noqa: S608
        )
        keys = [_stored_key(row) for row in rows]
        return {key.info.state: key for key in keys}

    async def published(self, now: datetime) -> list[StoredSigningKey]:
        """Every key in the JWKS: next, active, and retired ones still covering live tokens."""
        rows = await self._conn.fetch(
            f"SELECT {_KEY_COLUMNS} FROM signing_keys"  # noqa: S608
            " WHERE state IN ('active', 'next') OR publish_until > $1"
            " ORDER BY CASE state WHEN 'active' THEN 0 WHEN 'next' THEN 1 ELSE 2 END,"
            " create_time DESC",
            now,
        )
        return [_stored_key(row) for row in rows]

    async def insert(
        self,
        *,
        kid: str,
        alg: str,
        state: KeyState,
        public_jwk: dict[str, str],
        private_key_enc: bytes,
        kek_id: str,
        now: datetime,
    ) -> None:
        await self._conn.execute(
            "INSERT INTO signing_keys (kid, alg, state, public_jwk, private_key_enc, kek_id,"
            " create_time, activate_time) VALUES ($1, $2, $3, $4::text::jsonb, $5, $6, $7, $8)",
            kid,
            alg,
            state.value,
            json.dumps(public_jwk, separators=(",", ":")),
            private_key_enc,
            kek_id,
            now,
            now if state is KeyState.ACTIVE else None,
        )

    async def retire(self, kid: str, *, now: datetime, publish_until: datetime) -> None:
        await self._conn.execute(
            "UPDATE signing_keys SET state = 'retired', retire_time = $2, publish_until = $3"
            " WHERE kid = $1",
            kid,
            now,
            publish_until,
        )

    async def activate(self, kid: str, *, now: datetime) -> None:
        await self._conn.execute(
            "UPDATE signing_keys SET state = 'active', activate_time = $2 WHERE kid = $1",
            kid,
            now,
        )

    async def delete(self, kid: str) -> None:
        await self._conn.execute("DELETE FROM signing_keys WHERE kid = $1", kid)

    async def delete_unpublished(self, before: datetime) -> int:
        status = await self._conn.execute(
            "DELETE FROM signing_keys WHERE state = 'retired' AND publish_until < $1",
            before,
        )
        return affected_rows(status)
