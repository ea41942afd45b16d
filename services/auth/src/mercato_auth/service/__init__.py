"""The auth service's use cases, between the API and the domain rules.

Each method reads and writes through the store in one transaction, with the outbox event of the
change in that same transaction (the event built by :mod:`mercato_auth.publish`). Password
hashing runs outside transactions (tens of ms). The signing keys are kept by the
:class:`KeyRing` (:mod:`mercato_auth.service.keys`).
"""

from mercato_auth.service.accounts import Accounts
from mercato_auth.service.base import (
    AuthMetrics,
    OpenIdConfiguration,
    ThrottlePolicies,
    TokenSettings,
)
from mercato_auth.service.keys import KeyRing, RotationResult
from mercato_auth.service.tokens import Tokens

__all__ = [
    "AuthMetrics",
    "AuthService",
    "KeyRing",
    "OpenIdConfiguration",
    "RotationResult",
    "ThrottlePolicies",
    "TokenSettings",
]


class AuthService(Accounts, Tokens):
    """Every use case of the auth service (accounts and tokens share one set of dependencies)."""
