"""SQL of the ``login_throttle`` table."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from mercato_auth.domain.throttle import ThrottleKey, ThrottleState
from mercato_common.postgres import Connection, affected_rows

__all__ = ["Throttle"]


class Throttle:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def states(self, keys: Sequence[ThrottleKey]) -> dict[str, ThrottleState]:
        rows = await self._conn.fetch(
            "SELECT key, failures, last_failure_time, locked_until FROM login_throttle"
            " WHERE key = ANY($1::text[]) AND failures > 0",
            [k.key for k in keys],
        )
        return {
            row["key"]: ThrottleState(
                failures=row["failures"],
                last_failure_time=row["last_failure_time"],
                locked_until=row["locked_until"],
            )
            for row in rows
        }

    async def lock_state(self, key: ThrottleKey, now: datetime) -> ThrottleState | None:
        """The key's state, row-locked for this transaction (created empty if missing)."""
        await self._conn.execute(
            "INSERT INTO login_throttle (key, kind, failures, last_failure_time)"
            " VALUES ($1, $2, 0, $3) ON CONFLICT (key) DO NOTHING",
            key.key,
            key.kind.value,
            now,
        )
        row = await self._conn.fetchrow(
            "SELECT failures, last_failure_time, locked_until FROM login_throttle"
            " WHERE key = $1 FOR UPDATE",
            key.key,
        )
        if row is None or row["failures"] == 0:
            return None
        return ThrottleState(
            failures=row["failures"],
            last_failure_time=row["last_failure_time"],
            locked_until=row["locked_until"],
        )

    async def save(self, key: ThrottleKey, state: ThrottleState) -> None:
        await self._conn.execute(
            "UPDATE login_throttle SET failures = $2, last_failure_time = $3, locked_until = $4"
            " WHERE key = $1",
            key.key,
            state.failures,
            state.last_failure_time,
            state.locked_until,
        )

    async def reset(self, keys: Sequence[ThrottleKey]) -> None:
        await self._conn.execute(
            "DELETE FROM login_throttle WHERE key = ANY($1::text[])",
            [k.key for k in keys],
        )

    async def delete_stale(self, before: datetime, now: datetime) -> int:
        status = await self._conn.execute(
            "DELETE FROM login_throttle WHERE last_failure_time < $1"
            " AND (locked_until IS NULL OR locked_until < $2)",
            before,
            now,
        )
        return affected_rows(status)
