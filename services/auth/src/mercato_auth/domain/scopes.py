"""Scopes and the roles that grant them (docs/contracts.md, "Access")."""

from __future__ import annotations

from collections.abc import Iterable
from enum import Enum

from mercato_auth.domain.errors import InvalidScope

__all__ = [
    "ADMIN_SCOPES",
    "ALL_SCOPES",
    "CUSTOMER_SCOPES",
    "ROLE_SCOPES",
    "Role",
    "format_scope",
    "grant_scopes",
    "parse_scope",
    "scopes_for_roles",
    "sorted_scopes",
]

CATALOG_READ = "catalog:read"
CATALOG_WRITE = "catalog:write"
CATALOG_RESERVE = "catalog:reserve"
ORDERS_READ = "orders:read"
ORDERS_WRITE = "orders:write"
ORDERS_FULFILL = "orders:fulfill"
ORDERS_ADMIN = "orders:admin"
ANALYTICS_READ = "analytics:read"
USERS_ADMIN = "users:admin"

# Every scope in use, in the order of the contracts' table (also the order tokens list them in).
ALL_SCOPES: tuple[str, ...] = (
    CATALOG_READ,
    CATALOG_WRITE,
    CATALOG_RESERVE,
    ORDERS_READ,
    ORDERS_WRITE,
    ORDERS_FULFILL,
    ORDERS_ADMIN,
    ANALYTICS_READ,
    USERS_ADMIN,
)
_ORDER = {scope: i for i, scope in enumerate(ALL_SCOPES)}


class Role(Enum):
    """A user's role; the enum order is the canonical order of a user's roles."""

    CUSTOMER = "customer"
    ADMIN = "admin"


CUSTOMER_SCOPES = frozenset({CATALOG_READ, ORDERS_READ, ORDERS_WRITE})
# An admin has every scope except the service-to-service one.
ADMIN_SCOPES = frozenset(ALL_SCOPES) - {CATALOG_RESERVE}
ROLE_SCOPES: dict[Role, frozenset[str]] = {
    Role.CUSTOMER: CUSTOMER_SCOPES,
    Role.ADMIN: ADMIN_SCOPES,
}


def scopes_for_roles(roles: Iterable[Role]) -> frozenset[str]:
    granted: frozenset[str] = frozenset()
    for role in roles:
        granted |= ROLE_SCOPES[role]
    return granted


def sorted_scopes(scopes: Iterable[str]) -> list[str]:
    """Known scopes in the canonical order, then any others alphabetically."""
    return sorted(set(scopes), key=lambda s: (_ORDER.get(s, len(_ORDER)), s))


def parse_scope(scope: str) -> frozenset[str]:
    """RFC 6749 section 3.3: space-delimited, order does not matter."""
    return frozenset(part for part in scope.split(" ") if part)


def format_scope(scopes: Iterable[str]) -> str:
    return " ".join(sorted_scopes(scopes))


def grant_scopes(requested: frozenset[str], allowed: frozenset[str]) -> frozenset[str]:
    """The scopes to grant: all ``allowed`` when none are requested, else the request if allowed.

    A request naming anything not allowed fails as a whole with ``invalid_scope`` (rather than
    silently narrowing it), so a client never mistakes a token for more than it is.
    """
    if not requested:
        return allowed
    excess = requested - allowed
    if excess:
        raise InvalidScope(sorted_scopes(excess))
    return requested
