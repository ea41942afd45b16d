"""SQL of the ``users`` table."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg

from mercato_auth.domain.errors import EmailTaken
from mercato_auth.domain.scopes import Role
from mercato_auth.domain.users import PageCursor, User, UserFilter, UserState
from mercato_common.postgres import Connection

__all__ = ["Users"]


_USER_COLUMNS = "id, email, display_name, roles, state, create_time, update_time, disable_time"


def _user(row: Any) -> User:
    return User(
        id=str(row["id"]),
        email=row["email"],
        display_name=row["display_name"],
        roles=tuple(Role(value) for value in row["roles"]),
        state=UserState(row["state"]),
        create_time=row["create_time"],
        update_time=row["update_time"],
        disable_time=row["disable_time"],
    )


class Users:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def insert(self, user: User, password_hash: str) -> None:
        try:
            await self._conn.execute(
                "INSERT INTO users (id, email, display_name, password_hash, roles, state,"
                " create_time, update_time) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                uuid.UUID(user.id),
                user.email,
                user.display_name,
                password_hash,
                [role.value for role in user.roles],
                user.state.value,
                user.create_time,
                user.update_time,
            )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name == "users_email_key":
                raise EmailTaken() from None
            raise

    async def get(self, user_id: str, *, for_update: bool = False) -> User | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow(
            f"SELECT {_USER_COLUMNS} FROM users WHERE id = $1{lock}",  # noqa: S608
            uuid.UUID(user_id),
        )
        return None if row is None else _user(row)

    async def get_with_hash(
        self, email: str, *, for_update: bool = False
    ) -> tuple[User, str] | None:
        lock = " FOR UPDATE" if for_update else ""
        row = await self._conn.fetchrow(
            f"SELECT {_USER_COLUMNS}, password_hash FROM users WHERE email = $1{lock}",  # noqa: S608
            email,
        )
        return None if row is None else (_user(row), row["password_hash"])

    async def update(
        self, user: User, *, reason: str | None = None, actor: str | None = None
    ) -> None:
        await self._conn.execute(
            "UPDATE users SET display_name = $2, roles = $3, state = $4, update_time = $5,"
            " disable_time = $6,"
            " disable_reason = COALESCE($7, disable_reason),"
            " disabled_by = COALESCE($8, disabled_by)"
            " WHERE id = $1",
            uuid.UUID(user.id),
            user.display_name,
            [role.value for role in user.roles],
            user.state.value,
            user.update_time,
            user.disable_time,
            reason,
            actor,
        )

    async def set_password_hash(self, user_id: str, password_hash: str) -> None:
        await self._conn.execute(
            "UPDATE users SET password_hash = $2 WHERE id = $1",
            uuid.UUID(user_id),
            password_hash,
        )

    async def list(self, filters: UserFilter, cursor: PageCursor | None, limit: int) -> list[User]:
        conditions: list[str] = []
        args: list[Any] = []
        if filters.role is not None:
            args.append(filters.role.value)
            conditions.append(f"${len(args)} = ANY(roles)")
        if filters.state is not None:
            args.append(filters.state.value)
            conditions.append(f"state = ${len(args)}")
        if cursor is not None:
            args.extend([cursor.create_time, uuid.UUID(cursor.user_id)])
            conditions.append(f"(create_time, id) < (${len(args) - 1}, ${len(args)})")
        where = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        args.append(limit)
        rows = await self._conn.fetch(
            f"SELECT {_USER_COLUMNS} FROM users {where}"  # noqa: S608 (fixed fragments only)
            f"ORDER BY create_time DESC, id DESC LIMIT ${len(args)}",
            *args,
        )
        return [_user(row) for row in rows]
