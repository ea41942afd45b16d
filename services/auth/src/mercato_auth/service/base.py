"""What the use cases share: dependencies, settings values, metrics, throttling."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from functools import partial

import jwt
from prometheus_client import REGISTRY, CollectorRegistry, Counter

from mercato_auth.crypto import PasswordHashing
from mercato_auth.domain.errors import LoginThrottled
from mercato_auth.domain.throttle import (
    ThrottleKey,
    ThrottleKind,
    ThrottlePolicy,
    ThrottleState,
    record_failure,
    retry_after,
    throttle_key,
)
from mercato_auth.service.keys import KeyRing
from mercato_auth.store import AuthStore
from mercato_common.clock import utcnow
from mercato_common.identity import TokenVerifier
from mercato_common.revocation import TokenRevocations

__all__ = [
    "AuthMetrics",
    "OpenIdConfiguration",
    "ServiceBase",
    "ThrottlePolicies",
    "TokenSettings",
    "is_uuid",
    "looks_like_access_token",
]


@dataclass(frozen=True, slots=True)
class TokenSettings:
    issuer: str
    audience: str
    access_token_ttl: timedelta
    refresh_token_ttl: timedelta
    first_party_client_id: str


@dataclass(frozen=True, slots=True)
class ThrottlePolicies:
    """``account``: an account from one address (and a client id); ``address``: every account
    from one address; ``account_ceiling``: an account from anywhere (domain.throttle)."""

    account: ThrottlePolicy
    address: ThrottlePolicy
    account_ceiling: ThrottlePolicy

    def for_kind(self, kind: ThrottleKind) -> ThrottlePolicy:
        if kind is ThrottleKind.ADDRESS:
            return self.address
        if kind is ThrottleKind.ACCOUNT:
            return self.account_ceiling
        # A client id is throttled like an account from an address: one secret's holder.
        return self.account


@dataclass(frozen=True, slots=True)
class OpenIdConfiguration:
    issuer: str
    jwks_uri: str
    token_endpoint: str
    revocation_endpoint: str
    grant_types_supported: tuple[str, ...]
    token_endpoint_auth_methods_supported: tuple[str, ...]
    scopes_supported: tuple[str, ...]
    response_types_supported: tuple[str, ...]
    token_signing_alg_values_supported: tuple[str, ...]
    subject_types_supported: tuple[str, ...] = field(default=("public",))


class AuthMetrics:
    """Business counters of the auth service (Prometheus)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        counter = partial(Counter, registry=registry)
        self.logins = counter(
            "mercato_auth_logins",
            "Password logins, by outcome (success, invalid_credentials, disabled, throttled).",
            ["outcome"],
        )
        self.tokens_issued = counter(
            "mercato_auth_tokens_issued",
            "Access tokens issued, by grant (password, refresh_token, client_credentials).",
            ["grant_type"],
        )
        self.refresh_reuse = counter(
            "mercato_auth_refresh_token_reuse_detected",
            "Rotated refresh tokens presented again (their families were revoked).",
        )
        self.registrations = counter("mercato_auth_users_registered", "Accounts created.")


@dataclass(eq=False, repr=False)
class ServiceBase:
    """The dependencies of every use case, and the throttling they share."""

    store: AuthStore
    passwords: PasswordHashing
    keys: KeyRing
    _: KW_ONLY
    tokens: TokenSettings
    throttling: ThrottlePolicies
    metrics: AuthMetrics
    # The access-token denylist (None: no Redis, access tokens cannot be revoked) and the
    # verifier that reads a token before it is revoked.
    revocations: TokenRevocations | None = None
    verifier: TokenVerifier | None = None
    clock: Callable[[], datetime] = utcnow

    # Throttling -----------------------------------------------------------------------------

    def _throttle_keys(self, kind: ThrottleKind, name: str, address: str) -> list[ThrottleKey]:
        keys = [throttle_key(kind, name)]
        if kind is ThrottleKind.ACCOUNT:
            # The tight limit is per address (an unknown address is one address too).
            keys.append(throttle_key(ThrottleKind.ACCOUNT_ADDRESS, f"{name}\n{address}"))
        if address:
            keys.append(throttle_key(ThrottleKind.ADDRESS, address))
        return keys

    async def _check_throttle(
        self, keys: Sequence[ThrottleKey], *, outcome_metric: bool = False
    ) -> bool:
        """Raise LOGIN_THROTTLED while a key is locked; True when any key has failures."""
        async with self.store.read() as tx:
            states = await tx.throttle.states(keys)
        now = self.clock()
        waits = [retry_after(states.get(key.key), now) for key in keys]
        longest = max((wait for wait in waits if wait is not None), default=None)
        if longest is not None:
            if outcome_metric:
                self.metrics.logins.labels("throttled").inc()
            raise LoginThrottled(longest)
        return bool(states)

    async def _record_failures(self, keys: Sequence[ThrottleKey]) -> None:
        now = self.clock()
        async with self.store.write() as tx:
            for key in sorted(keys, key=lambda k: k.key):  # one lock order: no deadlocks
                state: ThrottleState | None = await tx.throttle.lock_state(key, now)
                policy = self.throttling.for_kind(key.kind)
                await tx.throttle.save(key, record_failure(state, now, policy))


def is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def looks_like_access_token(token: str) -> bool:
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError:
        return False
    return str(header.get("typ", "")).lower() in ("at+jwt", "application/at+jwt")
