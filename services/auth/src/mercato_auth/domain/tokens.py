"""Token rules: access-token claims (RFC 9068), refresh-token rotation and reuse detection."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from mercato_auth.domain.scopes import format_scope

__all__ = [
    "GRANT_CLIENT_CREDENTIALS",
    "GRANT_REFRESH_TOKEN",
    "SUPPORTED_GRANTS",
    "TOKEN_TYPE",
    "AccessTokenClaims",
    "RefreshCheck",
    "RefreshTokenRecord",
    "TokenGrant",
    "check_refresh_token",
]

GRANT_REFRESH_TOKEN = "refresh_token"  # noqa: S105 (a grant type name)
GRANT_CLIENT_CREDENTIALS = "client_credentials"
SUPPORTED_GRANTS = (GRANT_REFRESH_TOKEN, GRANT_CLIENT_CREDENTIALS)
TOKEN_TYPE = "Bearer"  # noqa: S105 (RFC 6750 token type)


@dataclass(frozen=True, slots=True)
class AccessTokenClaims:
    """The payload of an RFC 9068 JWT access token."""

    issuer: str
    audience: str
    subject: str
    client_id: str
    scopes: frozenset[str]
    issued_at: datetime
    lifetime: timedelta
    token_id: str
    # The login session (the refresh token family) of a user's token: revoking the family
    # revokes its access tokens too (mercato_common.revocation). None for a service client.
    session_id: str | None = None

    @property
    def expires_at(self) -> datetime:
        return self.issued_at + self.lifetime

    def to_jwt_claims(self) -> dict[str, Any]:
        iat = int(self.issued_at.timestamp())
        session = {} if self.session_id is None else {"sid": self.session_id}
        return {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience,
            "exp": iat + int(self.lifetime.total_seconds()),
            "iat": iat,
            "jti": self.token_id,
            "client_id": self.client_id,
            "scope": format_scope(self.scopes),
            **session,
        }


@dataclass(frozen=True, slots=True)
class TokenGrant:
    """What the token endpoint and Login answer (RFC 6749 section 5.1)."""

    access_token: str
    expires_in: int
    scopes: frozenset[str]
    refresh_token: str = ""

    @property
    def scope(self) -> str:
        return format_scope(self.scopes)


@dataclass(frozen=True, slots=True)
class RefreshTokenRecord:
    """A stored refresh token (found by its hash) with its family."""

    id: str
    family_id: str
    user_id: str
    client_id: str
    expire_time: datetime
    use_time: datetime | None
    family_revoke_time: datetime | None
    # The family's original scope request; None: whatever the user's roles grant at refresh.
    family_scopes: frozenset[str] | None


class RefreshCheck(Enum):
    """What to do with a presented refresh token."""

    ROTATE = "rotate"
    # A token that was already rotated came back: it was copied. Revoke the whole family.
    REUSED = "reused"
    REJECT = "reject"


def check_refresh_token(
    record: RefreshTokenRecord | None, *, now: datetime, client_id: str
) -> RefreshCheck:
    """Rotate a live token; flag a rotated one as reuse; reject everything else.

    ``client_id`` is the one the caller named (empty: none); a refresh token is bound to the
    client it was issued to (RFC 6749 section 6).
    """
    if record is None:
        return RefreshCheck.REJECT
    if record.family_revoke_time is not None:
        return RefreshCheck.REJECT
    if client_id and client_id != record.client_id:
        return RefreshCheck.REJECT
    if record.use_time is not None:
        return RefreshCheck.REUSED
    if record.expire_time <= now:
        return RefreshCheck.REJECT
    return RefreshCheck.ROTATE
