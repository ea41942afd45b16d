"""Accounts: email normalisation, the password policy, roles, updates and disabling."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import Enum

from mercato_auth.domain.errors import (
    InvalidPageToken,
    InvalidRequest,
    InvalidRoles,
    SelfLockout,
    WeakPassword,
)
from mercato_auth.domain.scopes import Role, scopes_for_roles, sorted_scopes
from mercato_common import paging

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "PASSWORD_MAX_BYTES",
    "PASSWORD_MIN_CHARS",
    "PageCursor",
    "User",
    "UserFilter",
    "UserState",
    "UserUpdate",
    "canonical_roles",
    "check_password_policy",
    "decode_page_token",
    "encode_page_token",
    "normalize_email",
    "page_size",
    "plan_disable",
    "plan_update",
]

PASSWORD_MIN_CHARS = 12
PASSWORD_MAX_BYTES = 1024
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100


class UserState(Enum):
    ACTIVE = "active"
    DISABLED = "disabled"


@dataclass(frozen=True, slots=True)
class User:
    """An account as the rest of the service sees it (the password hash stays in the store)."""

    id: str
    email: str
    display_name: str
    roles: tuple[Role, ...]
    state: UserState
    create_time: datetime
    update_time: datetime
    disable_time: datetime | None = None

    @property
    def scopes(self) -> frozenset[str]:
        return scopes_for_roles(self.roles)

    @property
    def sorted_scopes(self) -> list[str]:
        return sorted_scopes(self.scopes)

    @property
    def active(self) -> bool:
        return self.state is UserState.ACTIVE


def normalize_email(email: str) -> str:
    """Trimmed and lower-cased: ``" Ann@Example.COM "`` and ``"ann@example.com"`` are one user."""
    return email.strip().lower()


def check_password_policy(password: str, *, field: str = "password") -> None:
    """At least 12 characters and at most 1024 bytes of UTF-8 (argon2 input stays bounded)."""
    if len(password) < PASSWORD_MIN_CHARS:
        raise WeakPassword(f"must be at least {PASSWORD_MIN_CHARS} characters long", field=field)
    if len(password.encode("utf-8")) > PASSWORD_MAX_BYTES:
        raise WeakPassword(f"must be at most {PASSWORD_MAX_BYTES} bytes long", field=field)


def canonical_roles(roles: Iterable[Role]) -> tuple[Role, ...]:
    """Deduplicated, in enum order; at least one."""
    unique = set(roles)
    if not unique:
        raise InvalidRoles("a user has at least one role")
    return tuple(role for role in Role if role in unique)


@dataclass(frozen=True, slots=True)
class UserUpdate:
    """What an UpdateUser call changes; ``user`` is the account after it."""

    user: User
    changed: bool
    old_roles: tuple[Role, ...]
    roles_changed: bool


def plan_update(
    user: User,
    *,
    display_name: str | None,
    roles: Iterable[Role] | None,
    actor_id: str,
    now: datetime,
) -> UserUpdate:
    """Apply the masked fields. Same values again change nothing (no event, same update_time).

    An admin cannot take the admin role away from themselves: the last admin would otherwise be
    one click away from locking everybody out.
    """
    new_name = user.display_name if display_name is None else display_name
    new_roles = user.roles if roles is None else canonical_roles(roles)
    if actor_id == user.id and Role.ADMIN in user.roles and Role.ADMIN not in new_roles:
        raise SelfLockout("you cannot remove your own admin role")
    roles_changed = new_roles != user.roles
    changed = roles_changed or new_name != user.display_name
    if not changed:
        return UserUpdate(user=user, changed=False, old_roles=user.roles, roles_changed=False)
    updated = replace(user, display_name=new_name, roles=new_roles, update_time=now)
    return UserUpdate(user=updated, changed=True, old_roles=user.roles, roles_changed=roles_changed)


def plan_disable(user: User, *, actor_id: str, now: datetime) -> User | None:
    """The disabled account, or None when it is disabled already (idempotent, no new event)."""
    if user.state is UserState.DISABLED:
        return None
    if actor_id == user.id:
        raise SelfLockout("you cannot disable your own account")
    return replace(user, state=UserState.DISABLED, disable_time=now, update_time=now)


# Pagination ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class UserFilter:
    role: Role | None = None
    state: UserState | None = None

    def fingerprint(self) -> str:
        text = f"{self.role.value if self.role else ''}|{self.state.value if self.state else ''}"
        return hashlib.sha256(text.encode()).hexdigest()[:16]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


@dataclass(frozen=True, slots=True)
class PageCursor:
    """Keyset position: the last user of the previous page (newest first)."""

    create_time: datetime
    user_id: str


def page_size(size: int) -> int:
    """0 → the default page size; above the maximum → the maximum (AIP-158)."""
    bad = InvalidRequest.for_field("page_size")
    return paging.page_size(size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE, invalid=bad)


# The listing a page token belongs to, and the fields of its position. The filters' fingerprint
# travels in the position (not as the token's fingerprint) so that a token of other filters is
# told apart from a malformed one: the caller learns to start again from the first page.
_LISTING = "users"
_POSITION = {"t": int, "i": str, "f": str}
_FILTERS_CHANGED = "the filters changed between pages; start from the first page"


def encode_page_token(cursor: PageCursor, filters: UserFilter) -> str:
    micros = (cursor.create_time - _EPOCH) // _MICROSECOND
    return paging.encode_page_token(
        _LISTING, {"t": micros, "i": cursor.user_id, "f": filters.fingerprint()}
    )


def decode_page_token(token: str, filters: UserFilter) -> PageCursor | None:
    """None for the first page; :class:`InvalidPageToken` for garbage or changed filters."""
    at = paging.decode_page_token(token, kind=_LISTING, fields=_POSITION, invalid=InvalidPageToken)
    if at is None:
        return None
    if at["f"] != filters.fingerprint():
        raise InvalidPageToken(_FILTERS_CHANGED)
    try:
        when = _EPOCH + at["t"] * _MICROSECOND
    except OverflowError:
        raise InvalidPageToken() from None
    return PageCursor(create_time=when, user_id=at["i"])
