"""The auth service's errors: one root, each also one of the kinds of ``mercato_common.errors``.

The interceptor in ``libs/common`` maps the kind to the gRPC code and the reason to the single
``google.rpc.ErrorInfo`` (domain ``auth.mercato``). The OAuth errors carry the RFC 6749 / 7009
codes upper-cased (``INVALID_GRANT``...), which the gateway renders as
``{"error": "invalid_grant", ...}``. Messages are shown to callers: never a secret in them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from mercato_common import errors
from mercato_common.errors import FieldViolation, MercatoError

__all__ = [
    "AuthError",
    "AuthUnavailable",
    "EmailTaken",
    "InvalidClient",
    "InvalidCredentials",
    "InvalidEmail",
    "InvalidGrant",
    "InvalidPageToken",
    "InvalidRequest",
    "InvalidRoles",
    "InvalidScope",
    "LoginThrottled",
    "OAuthError",
    "SelfLockout",
    "SigningKeyUnavailable",
    "UnsupportedGrantType",
    "UnsupportedTokenType",
    "UserDisabled",
    "UserNotFound",
    "WeakPassword",
]


class AuthError(MercatoError):
    """Root of every error the auth service raises on purpose."""

    domain = "auth.mercato"


class EmailTaken(AuthError, errors.AlreadyExists):
    default_reason = "EMAIL_TAKEN"
    default_message = "an account with this email already exists"


class UserNotFound(AuthError, errors.NotFound):
    default_reason = "USER_NOT_FOUND"
    default_message = "no such user"


class WeakPassword(AuthError, errors.InvalidArgument):
    default_reason = "PASSWORD_POLICY"

    def __init__(self, description: str, *, field: str = "password") -> None:
        super().__init__(
            f"the password does not meet the policy: {description}",
            field_violations=[FieldViolation(field, description)],
        )


class InvalidRoles(AuthError, errors.InvalidArgument):
    default_reason = "INVALID_ROLES"

    def __init__(self, description: str) -> None:
        super().__init__(description, field_violations=[FieldViolation("user.roles", description)])


class InvalidEmail(AuthError, errors.InvalidArgument):
    default_reason = "INVALID_EMAIL"

    def __init__(self) -> None:
        super().__init__(
            "not a valid email address",
            field_violations=[FieldViolation("email", "not a valid email address")],
        )


class InvalidPageToken(AuthError, errors.InvalidPageToken):
    """Malformed, or of other filters (the message then says so)."""


class InvalidRequest(AuthError, errors.InvalidRequest):
    """Bad input the API's request validation did not already refuse."""


class InvalidCredentials(AuthError, errors.Unauthenticated):
    """Wrong password or unknown email: one error, so accounts cannot be enumerated."""

    default_reason = "INVALID_CREDENTIALS"
    default_message = "the email or the password is wrong"


class UserDisabled(AuthError, errors.PermissionDenied):
    """Only ever raised after the password was verified, so it reveals nothing new."""

    default_reason = "USER_DISABLED"
    default_message = "this account is disabled"


class SelfLockout(AuthError, errors.FailedPrecondition):
    default_reason = "SELF_LOCKOUT"


class LoginThrottled(AuthError, errors.ResourceExhausted):
    """Too many failures for an account or a client address; retry after the delay."""

    default_reason = "LOGIN_THROTTLED"

    def __init__(self, retry_after_seconds: int) -> None:
        self.retry_after_seconds = max(1, int(retry_after_seconds))
        super().__init__(
            f"too many failed attempts; retry in {self.retry_after_seconds} seconds",
            metadata={"retry_after_seconds": str(self.retry_after_seconds)},
            retry_after=self.retry_after_seconds,
        )


class AuthUnavailable(AuthError, errors.StoreUnavailable):
    """The auth database cannot be reached right now; the caller may retry."""

    default_reason = "AUTH_UNAVAILABLE"
    default_message = "the auth service's database is unavailable; retry shortly"


class SigningKeyUnavailable(AuthError, errors.Unavailable):
    default_reason = "SIGNING_KEY_UNAVAILABLE"
    default_message = "no signing key is available; retry shortly"


class OAuthError(AuthError):
    """An RFC 6749 section 5.2 / RFC 7009 error; ``oauth_code`` is the lower-case RFC code."""

    oauth_code = "invalid_request"

    def __init__(
        self,
        message: str = "",
        *,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
    ) -> None:
        super().__init__(
            message,
            reason=self.oauth_code.upper(),
            metadata=metadata,
            field_violations=field_violations,
        )


class InvalidGrant(OAuthError, errors.InvalidArgument):
    """The refresh token is unknown, expired, revoked, reused or issued to another client."""

    oauth_code = "invalid_grant"
    default_message = "the refresh token is invalid, expired or revoked"


class InvalidClient(OAuthError, errors.Unauthenticated):
    """Client authentication failed (unknown client, wrong secret, disabled client)."""

    oauth_code = "invalid_client"
    default_message = "client authentication failed"


class InvalidScope(OAuthError, errors.InvalidArgument):
    oauth_code = "invalid_scope"

    def __init__(self, unknown: Sequence[str]) -> None:
        super().__init__(
            "the requested scope exceeds what may be granted",
            metadata={"scopes": " ".join(unknown)[:500]},
        )


class UnsupportedGrantType(OAuthError, errors.InvalidArgument):
    oauth_code = "unsupported_grant_type"
    default_message = "supported grant types: refresh_token, client_credentials"


class UnsupportedTokenType(OAuthError, errors.InvalidArgument):
    oauth_code = "unsupported_token_type"
    default_message = "access tokens cannot be revoked here: no revocation list is configured"
