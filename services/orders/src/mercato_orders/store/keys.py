"""Idempotency keys of CreateOrder: claim, wait, take over, complete, forget.

A key row is claimed before anything is reserved, with a fresh order id and an owner token:
``INSERT ... ON CONFLICT DO NOTHING`` lets exactly one of many concurrent requests win. Every
later step is guarded by the owner token, so a create whose lease expired and was taken over
(by a retry or the reconciler) can neither commit its order nor release stock it no longer owns.
Times come from the database clock (``clock_timestamp()``), shared by every replica.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum

from mercato_common.postgres import Connection, affected_rows

__all__ = ["COMPLETE_KEY", "DELETE_EXPIRED_KEYS", "KeyRow", "KeyState", "Keys"]

# Marks a PENDING key DONE with its order, only while the caller still owns it (owner token):
# parameters user id, key, owner, order id, time to live (from ``$n``, see ``orders.numbered``).
COMPLETE_KEY = """
    UPDATE idempotency_keys
    SET state = 'DONE', lease_until = clock_timestamp(), expire_time = clock_timestamp() + ${n4}
    WHERE user_id = ${n} AND key = ${n1} AND owner = ${n2}::uuid AND order_id = ${n3}::uuid
      AND state = 'PENDING'
"""

# The PENDING key of user ``$1`` named ``$2``, while ``$3`` owns it.
_OWNED = "user_id = $1 AND key = $2 AND owner = $3::uuid AND state = 'PENDING'"


class KeyState(Enum):
    PENDING = "PENDING"
    DONE = "DONE"


@dataclass(frozen=True, slots=True)
class KeyRow:
    user_id: str
    key: str
    fingerprint: str
    order_id: str
    state: KeyState
    owner: str
    lease_expired: bool
    # True when this call inserted the row (the caller owns it).
    inserted: bool = False


def _columns(alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return (
        f"{p}user_id, {p}key, {p}fingerprint, {p}order_id::text AS order_id, {p}state, "
        f"{p}owner::text AS owner, {p}lease_until < clock_timestamp() AS lease_expired"
    )


_COLUMNS = _columns()


def _row(record: object, *, inserted: bool = False) -> KeyRow:
    r: dict[str, object] = dict(record)  # type: ignore[call-overload]
    return KeyRow(
        user_id=str(r["user_id"]),
        key=str(r["key"]),
        fingerprint=str(r["fingerprint"]),
        order_id=str(r["order_id"]),
        state=KeyState(r["state"]),
        owner=str(r["owner"]),
        lease_expired=bool(r["lease_expired"]),
        inserted=inserted,
    )


# ``now()``, not ``clock_timestamp()``: a volatile bound cannot be an index condition, so the
# expiry index was walked over every kept key (3,335 after a bench run: 1.2-1.4 ms against
# 0.14-0.21 ms per round). $1: how many at most; $2: the time to compare with (None: now).
DELETE_EXPIRED_KEYS = """
DELETE FROM idempotency_keys WHERE (user_id, key) IN (
    SELECT user_id, key FROM idempotency_keys
    WHERE state = 'DONE' AND expire_time < COALESCE($2, now())
    ORDER BY expire_time LIMIT $1
)
"""


class Keys:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def claim(
        self,
        *,
        user_id: str,
        key: str,
        fingerprint: str,
        order_id: str,
        owner: str,
        lease: timedelta,
    ) -> KeyRow | None:
        """Insert the key for this request, or return the row already there.

        None when the conflicting row is not visible yet (a concurrent claim committed after
        this statement's snapshot): just try again.
        """
        record = await self._conn.fetchrow(
            f"""
            WITH claimed AS (
                INSERT INTO idempotency_keys
                    (user_id, key, fingerprint, order_id, state, owner, lease_until)
                VALUES ($1, $2, $3, $4::uuid, 'PENDING', $5::uuid, clock_timestamp() + $6)
                ON CONFLICT (user_id, key) DO NOTHING
                RETURNING {_COLUMNS}, true AS inserted
            )
            SELECT * FROM claimed
            UNION ALL
            SELECT {_COLUMNS}, false AS inserted FROM idempotency_keys
            WHERE user_id = $1 AND key = $2 AND NOT EXISTS (SELECT 1 FROM claimed)
            """,  # noqa: S608 (constant column list)
            user_id,
            key,
            fingerprint,
            order_id,
            owner,
            lease,
        )
        if record is None:
            return None
        return _row(record, inserted=bool(record["inserted"]))

    async def take_over(
        self, *, user_id: str, key: str, old_owner: str, new_owner: str, lease: timedelta
    ) -> KeyRow | None:
        """Own a PENDING key whose lease expired (its create died or gave up); None if lost."""
        record = await self._conn.fetchrow(
            f"""
            UPDATE idempotency_keys SET owner = $4::uuid, lease_until = clock_timestamp() + $5
            WHERE {_OWNED} AND lease_until < clock_timestamp()
            RETURNING {_COLUMNS}
            """,  # noqa: S608
            user_id,
            key,
            old_owner,
            new_owner,
            lease,
        )
        return None if record is None else _row(record, inserted=True)

    async def fence(self, *, user_id: str, key: str, owner: str, lease: timedelta) -> bool:
        """Extend the lease if ``owner`` still holds the key: nobody can take it over meanwhile."""
        return await self._lease(user_id, key, owner, lease)

    async def rekey(self, *, user_id: str, key: str, owner: str, order_id: str) -> bool:
        """Point the key at a new order id (its old reservation was closed)."""
        return await self._update_owned(user_id, key, owner, "order_id = $4::uuid", order_id)

    async def abandon(self, *, user_id: str, key: str, owner: str, retry_after: timedelta) -> None:
        """Give the key up with its reservation not released: reconciliation takes it over."""
        await self._lease(user_id, key, owner, retry_after)

    async def _lease(self, user_id: str, key: str, owner: str, lease: timedelta) -> bool:
        """Let the lease of a PENDING key ``owner`` holds end ``lease`` from now; False if lost."""
        return await self._update_owned(
            user_id, key, owner, "lease_until = clock_timestamp() + $4", lease
        )

    async def _update_owned(
        self, user_id: str, key: str, owner: str, assignment: str, value: object
    ) -> bool:
        """``SET assignment`` (of ``$4``, ``value``) on the key ``owner`` holds; False if lost."""
        status = await self._conn.execute(
            f"UPDATE idempotency_keys SET {assignment} WHERE {_OWNED}",  # noqa: S608 (constants)
            user_id,
            key,
            owner,
            value,
        )
        return bool(status == "UPDATE 1")

    async def forget(self, *, user_id: str, key: str, owner: str) -> bool:
        """Delete a PENDING key that placed and holds nothing (its request may be retried)."""
        status = await self._conn.execute(
            f"DELETE FROM idempotency_keys WHERE {_OWNED}",  # noqa: S608 (constant)
            user_id,
            key,
            owner,
        )
        return bool(status == "DELETE 1")

    async def claim_abandoned(self, *, limit: int, lease: timedelta) -> list[KeyRow]:
        """Take over up to ``limit`` PENDING keys whose lease expired (for reconciliation)."""
        records = await self._conn.fetch(
            f"""
            UPDATE idempotency_keys AS k
            SET owner = gen_random_uuid(), lease_until = clock_timestamp() + $2
            FROM (
                SELECT user_id, key FROM idempotency_keys
                WHERE state = 'PENDING' AND lease_until < clock_timestamp()
                ORDER BY lease_until LIMIT $1
                FOR UPDATE SKIP LOCKED
            ) AS due
            WHERE k.user_id = due.user_id AND k.key = due.key
            RETURNING {_columns("k")}
            """,  # noqa: S608
            limit,
            lease,
        )
        return [_row(record, inserted=True) for record in records]

    async def pending_order_ids(self, order_ids: list[str]) -> set[str]:
        """Which of ``order_ids`` belong to a create still in progress (a PENDING key)."""
        records = await self._conn.fetch(
            "SELECT order_id::text AS order_id FROM idempotency_keys "
            "WHERE order_id = ANY($1::uuid[]) AND state = 'PENDING'",
            order_ids,
        )
        return {str(r["order_id"]) for r in records}

    async def delete_expired(self, *, limit: int, now: datetime | None = None) -> int:
        """Delete up to ``limit`` DONE keys past their retention; the number deleted."""
        status = await self._conn.execute(DELETE_EXPIRED_KEYS, limit, now)
        return affected_rows(status)


def new_token() -> str:
    return str(uuid.uuid4())
