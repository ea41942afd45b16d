"""Bearer tokens at the edge: verification, the route's access rule, RFC 6750 challenges.

Tokens are verified with ``mercato_common.identity.JwksTokenVerifier`` (keys from auth's
``GetJwks`` over gRPC). A missing token on a protected route gives 401 with a bare
``WWW-Authenticate: Bearer realm="mercato"`` (RFC 6750 section 3.1: no error code when the
request had no credentials); an invalid or expired one 401 with ``error="invalid_token"``; a
token without a required scope 403 with ``error="insufficient_scope"`` and the ``scope`` needed.
A token sent to a public route is verified too (the service would refuse a bad one anyway).
"""

from __future__ import annotations

import base64
import binascii
import logging
from dataclasses import dataclass
from urllib.parse import unquote_plus

import grpc

from mercato_common.errors import Unauthenticated
from mercato_common.identity import (
    AccessPolicy,
    Audience,
    Identity,
    TokenVerifier,
)
from mercato_common.revocation import RevocationUnavailable
from mercato_gateway.errors import GATEWAY_DOMAIN, ApiError

__all__ = [
    "Authenticator",
    "BasicCredentials",
    "parse_basic",
]

_log = logging.getLogger("mercato_gateway.auth")


@dataclass(frozen=True, slots=True)
class BasicCredentials:
    client_id: str
    client_secret: str


def parse_basic(header: str) -> BasicCredentials | None:
    """RFC 6749 section 2.3.1 client credentials from ``Authorization: Basic``, else None."""
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise _oauth_invalid_client("malformed Basic credentials") from None
    client_id, colon, secret = decoded.partition(":")
    if not colon:
        raise _oauth_invalid_client("malformed Basic credentials")
    return BasicCredentials(unquote_plus(client_id), unquote_plus(secret))


def _oauth_invalid_client(message: str) -> ApiError:
    return ApiError(
        401,
        "UNAUTHENTICATED",
        message,
        "INVALID_CLIENT",
        headers={"www-authenticate": 'Basic realm="mercato"'},
    )


class Authenticator:
    """Verifies the caller of a route and enforces the route's access rule."""

    def __init__(self, verifier: TokenVerifier, *, realm: str = "mercato") -> None:
        self._verifier = verifier
        self._realm = realm

    def _challenge(self, error: str | None = None, **params: str) -> str:
        parts = [f'realm="{self._realm}"']
        if error:
            parts.append(f'error="{error}"')
        for key, value in params.items():
            safe = "".join(ch for ch in value if ch not in '"\\' and " " <= ch <= "~")
            parts.append(f'{key}="{safe}"')
        return "Bearer " + ", ".join(parts)

    def challenge_for(self, reason: str) -> str:
        """The ``WWW-Authenticate`` value of a 401 that a service returned."""
        if reason.startswith("TOKEN_") and reason != "TOKEN_MISSING":
            return self._challenge("invalid_token")
        return self._challenge()

    def missing(self) -> ApiError:
        return ApiError(
            401,
            "UNAUTHENTICATED",
            "a valid access token is required",
            "TOKEN_MISSING",
            headers={"www-authenticate": self._challenge()},
        )

    def invalid(self, message: str, reason: str = "TOKEN_INVALID") -> ApiError:
        return ApiError(
            401,
            "UNAUTHENTICATED",
            message,
            reason,
            headers={
                "www-authenticate": self._challenge("invalid_token", error_description=message)
            },
        )

    @staticmethod
    def bearer_token(authorization: str | None) -> str | None:
        """The token of ``Authorization: Bearer <token>``; None for none or another scheme."""
        if not authorization:
            return None
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer":
            return None
        return token.strip() or None

    async def verify(self, token: str) -> Identity:
        try:
            return await self._verifier.verify(token)
        except Unauthenticated as error:
            raise self.invalid(error.message, error.reason) from None
        except RevocationUnavailable as error:  # TOKEN_REVOCATION_ON_ERROR=closed
            raise ApiError(
                503, "UNAVAILABLE", error.message, error.reason, GATEWAY_DOMAIN, retry_after=1
            ) from None
        except Exception as error:  # JWKS fetch failed (auth down) or an unusable key set
            code = error.code().name if isinstance(error, grpc.aio.AioRpcError) else None
            _log.warning(
                "could not fetch the JWKS from auth",
                extra={"grpc_code": code, "error_type": type(error).__name__},
            )
            raise ApiError(
                503,
                "UNAVAILABLE",
                "token verification is unavailable",
                "JWKS_UNAVAILABLE",
                GATEWAY_DOMAIN,
                retry_after=1,
            ) from None

    def authorize(self, access: AccessPolicy, identity: Identity | None) -> None:
        """401 without a needed identity, 403 without the route's scopes."""
        if access.audience is Audience.PUBLIC:
            return
        if identity is None:
            raise self.missing()
        if access.audience is Audience.SCOPED and not identity.has_scopes(access.scopes):
            needed = " ".join(sorted(access.scopes))
            missing = " ".join(sorted(access.scopes - identity.scopes))
            raise ApiError(
                403,
                "PERMISSION_DENIED",
                "the access token lacks a required scope",
                "SCOPE_MISSING",
                metadata={"missing_scopes": missing},
                headers={
                    "www-authenticate": self._challenge(
                        "insufficient_scope",
                        scope=needed,
                        error_description="the access token lacks a required scope",
                    )
                },
            )
