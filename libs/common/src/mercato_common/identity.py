"""Who is calling, and may they call this method.

The gateway verifies the caller's access token and forwards it in the
``authorization`` metadata; every service verifies it again (no trust in the
network) with a :class:`TokenVerifier`, usually :class:`JwksTokenVerifier`
fed by auth's JWKS. Each RPC declares who may call it with the
``(mercato.api.v1.access)`` method option; :func:`access_policy` reads it from
the compiled descriptors and :func:`check_access` enforces it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from contextvars import ContextVar, Token
from dataclasses import KW_ONLY, dataclass, field
from enum import Enum
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

import grpc
import jwt
from google.protobuf import descriptor_pool
from google.protobuf.json_format import MessageToDict

from mercato.auth.v1 import auth_pb2
from mercato_common.errors import MercatoError, PermissionDenied, Unauthenticated, Unavailable

if TYPE_CHECKING:
    from mercato_common.revocation import TokenRevocations
    from mercato_common.settings import TokenSettings

__all__ = [
    "AccessPolicy",
    "Audience",
    "Identity",
    "JwksTokenVerifier",
    "TokenVerifier",
    "access_policy",
    "auth_jwks_fetcher",
    "check_access",
    "current_identity",
    "require_identity",
]


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified caller: a user (``sub``) or a service client (``client_id``)."""

    subject: str
    scopes: frozenset[str] = frozenset()
    client_id: str | None = None
    token_id: str | None = None
    expires_at: int | None = None
    issued_at: int | None = None
    # The login session (``sid``: the refresh token family) of a user's token; None for a
    # service client's.
    session_id: str | None = None
    # The bearer token as received, so a service may forward it; never logged.
    token: str = field(default="", repr=False, compare=False)

    def has_scopes(self, required: frozenset[str]) -> bool:
        return required <= self.scopes


_current_identity: ContextVar[Identity | None] = ContextVar("mercato_identity", default=None)


def current_identity() -> Identity | None:
    """The verified caller of the RPC being served, or None for a public call."""
    return _current_identity.get()


def require_identity() -> Identity:
    identity = _current_identity.get()
    if identity is None:
        raise Unauthenticated("a valid access token is required", reason="TOKEN_MISSING")
    return identity


def set_identity(identity: Identity | None) -> Token[Identity | None]:
    """Bind the caller for the current task (the identity interceptor does this)."""
    return _current_identity.set(identity)


def reset_identity(binding: Token[Identity | None]) -> None:
    _current_identity.reset(binding)


class Audience(Enum):
    PUBLIC = "public"
    AUTHENTICATED = "authenticated"
    SCOPED = "scoped"


@dataclass(frozen=True, slots=True)
class AccessPolicy:
    audience: Audience
    scopes: frozenset[str] = frozenset()


# No option, or an unspecified audience, means the strictest reading: only
# callers holding every listed scope, and there are none to hold, so a token
# with no special scopes still gets PERMISSION_DENIED. Methods must opt in.
_DENY_ALL = AccessPolicy(Audience.SCOPED, frozenset({"<undeclared>"}))


@cache
def access_policy(full_method: str) -> AccessPolicy:
    """The access option of ``/package.Service/Method`` from the default descriptor pool."""
    from mercato.api.v1 import access_pb2  # generated contracts; imported where needed

    service_name, _, method_name = full_method.lstrip("/").partition("/")
    try:
        service = descriptor_pool.Default().FindServiceByName(service_name)
    except KeyError:
        return _DENY_ALL
    method = service.methods_by_name.get(method_name)
    if method is None:
        return _DENY_ALL
    options = method.GetOptions()
    if not options.HasExtension(access_pb2.access):
        return _DENY_ALL
    rule = options.Extensions[access_pb2.access]
    audiences = {
        access_pb2.AUDIENCE_PUBLIC: Audience.PUBLIC,
        access_pb2.AUDIENCE_AUTHENTICATED: Audience.AUTHENTICATED,
        access_pb2.AUDIENCE_SCOPED: Audience.SCOPED,
    }
    audience = audiences.get(rule.audience)
    if audience is None:
        return _DENY_ALL
    return AccessPolicy(audience, frozenset(rule.scopes))


def check_access(policy: AccessPolicy, identity: Identity | None) -> None:
    """Raise UNAUTHENTICATED without a needed identity, PERMISSION_DENIED without its scopes."""
    if policy.audience is Audience.PUBLIC:
        return
    if identity is None:
        raise Unauthenticated("a valid access token is required", reason="TOKEN_MISSING")
    if policy.audience is Audience.SCOPED and not identity.has_scopes(policy.scopes):
        missing = sorted(policy.scopes - identity.scopes)
        raise PermissionDenied(
            "the access token lacks a required scope",
            reason="SCOPE_MISSING",
            metadata={"missing_scopes": " ".join(missing)},
        )


class TokenVerifier(Protocol):
    async def verify(self, token: str) -> Identity:
        """Return the identity a token proves, or raise :class:`Unauthenticated`."""
        ...


@dataclass(eq=False)
class JwksTokenVerifier:
    """Verifies RFC 9068 JWT access tokens against a JWKS fetched on demand.

    Keys are cached; an unknown ``kid`` triggers one refetch (at most every
    ``min_refresh_seconds``), so rotation needs no restart and a flood of forged
    ``kid`` values cannot turn into a flood of JWKS fetches.

    Verified tokens are remembered for ``cache_seconds`` (never past their expiry, at most
    ``cache_size`` of them): a client sends the same token with every request, and the
    signature check is the largest single cost of an authenticated call (benchmarked in
    bench/bench_gateway.py). Only tokens that passed every check are remembered; a refetched
    key set that lost a key forgets everything.

    With ``revocations`` (:mod:`mercato_common.revocation`), a token is also refused once it
    is on the revocation list; a clean answer is remembered ``revocation_cache_seconds``.
    """

    ALGORITHMS = ("EdDSA", "ES256")

    fetch_jwks: Callable[[], Awaitable[Mapping[str, Any]]]
    _: KW_ONLY
    issuer: str
    audience: str
    leeway_seconds: float = 30.0
    min_refresh_seconds: float = 30.0
    cache_seconds: float = 60.0
    cache_size: int = 10_000
    revocations: TokenRevocations | None = field(default=None, repr=False)
    revocation_cache_seconds: float = 1.0
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    _keys: dict[str, jwt.PyJWK] = field(default_factory=dict, init=False, repr=False)
    _fetched_at: float | None = field(default=None, init=False, repr=False)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False, repr=False)
    # token -> what is known of it (see _Verified); the tokens are secrets, never in the repr
    _verified: dict[str, _Verified] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_settings(
        cls,
        fetch_jwks: Callable[[], Awaitable[Mapping[str, Any]]],
        settings: TokenSettings,
        **options: Any,
    ) -> JwksTokenVerifier:
        """A verifier configured by the process's ``TOKEN_*`` settings, reading the revocation
        list in the process's Redis (unless ``revocations`` is given; close it on stop)."""
        if "revocations" not in options:
            from mercato_common.revocation import token_revocations

            options["revocations"] = token_revocations(settings)
        return cls(
            fetch_jwks,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            leeway_seconds=settings.token_leeway_seconds,
            cache_seconds=settings.token_cache_seconds,
            revocation_cache_seconds=settings.token_revocation_cache_seconds,
            **options,
        )

    async def close(self) -> None:
        """Close the revocation list's Redis client (the process is stopping)."""
        if self.revocations is not None:
            await self.revocations.close()

    async def _refresh(self) -> None:
        async with self._lock:
            now = self.clock()
            if self._fetched_at is not None and now - self._fetched_at < self.min_refresh_seconds:
                return
            try:
                jwks = await self.fetch_jwks()
            except (MercatoError, grpc.aio.AioRpcError, OSError) as error:
                # Auth unreachable (a restart, a DNS gap): the caller may retry; nothing about
                # the token is known yet, so neither a refusal nor an internal error.
                raise Unavailable(
                    "the token signing keys cannot be fetched now", reason="JWKS_UNAVAILABLE"
                ) from error
            keys: dict[str, jwt.PyJWK] = {}
            for key in jwt.PyJWKSet.from_dict(dict(jwks)).keys:
                if key.key_id:
                    keys[key.key_id] = key
            if not keys.keys() >= self._keys.keys():
                self._verified.clear()  # a withdrawn key: its tokens must be checked again
            self._keys = keys
            self._fetched_at = now

    async def verify(self, token: str) -> Identity:
        now = self.clock()
        known = self._verified.get(token)
        if known is not None and not (now < known.until and self.wall_clock() <= known.expires):
            del self._verified[token]
            known = None
        if known is None:
            identity = await self._verify(token)
            if self.cache_seconds > 0 and identity.expires_at is not None:
                if len(self._verified) >= self.cache_size:
                    self._verified.clear()  # bounded without bookkeeping; refills from traffic
                known = _Verified(
                    identity, now + self.cache_seconds, identity.expires_at + self.leeway_seconds
                )
                self._verified[token] = known
        else:
            identity = known.identity
        if self.revocations is not None and (known is None or now >= known.clean_until):
            revoked = await self.revocations.revoked(
                subject=identity.subject,
                token_id=identity.token_id or "",  # always set: jti is a required claim
                issued_at=identity.issued_at,
                session_id=identity.session_id,
            )
            if revoked:
                self._verified.pop(token, None)
                raise Unauthenticated("the access token has been revoked", reason="TOKEN_REVOKED")
            if known is not None:
                known.clean_until = now + self.revocation_cache_seconds
        return identity

    async def _verify(self, token: str) -> Identity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError:
            raise Unauthenticated("the access token is malformed", reason="TOKEN_INVALID") from None
        if header.get("typ", "").lower() not in ("at+jwt", "application/at+jwt"):
            raise Unauthenticated("the token is not an access token", reason="TOKEN_INVALID")
        kid = header.get("kid")
        if not isinstance(kid, str) or header.get("alg") not in self.ALGORITHMS:
            raise Unauthenticated("the access token is malformed", reason="TOKEN_INVALID")
        if kid not in self._keys:
            await self._refresh()
        key = self._keys.get(kid)
        if key is None:
            raise Unauthenticated("the access token's key is unknown", reason="TOKEN_INVALID")
        try:
            claims = jwt.decode(
                token,
                key=key,
                algorithms=list(self.ALGORITHMS),
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway_seconds,
                options={"require": ["exp", "iat", "sub", "iss", "aud", "jti"]},
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("the access token has expired", reason="TOKEN_EXPIRED") from None
        except jwt.InvalidTokenError:
            raise Unauthenticated("the access token is invalid", reason="TOKEN_INVALID") from None
        scope = claims.get("scope", "")
        return Identity(
            subject=str(claims["sub"]),
            scopes=frozenset(scope.split()) if isinstance(scope, str) else frozenset(),
            client_id=claims.get("client_id"),
            token_id=str(claims["jti"]),
            expires_at=int(claims["exp"]),
            issued_at=int(claims["iat"]),
            session_id=str(claims["sid"]) if "sid" in claims else None,
            token=token,
        )


@dataclass(slots=True)
class _Verified:
    """A token that passed every check: its identity, the monotonic time until which it may be
    answered from memory, the wall-clock time it expires at (leeway included), and the
    monotonic time until which it needs no revocation check."""

    identity: Identity
    until: float
    expires: float
    clean_until: float = 0.0


_GET_JWKS = "/mercato.auth.v1.AuthService/GetJwks"


def auth_jwks_fetcher(
    channel: grpc.aio.Channel | Callable[[], grpc.aio.Channel], *, timeout: float | None = None
) -> Callable[[], Awaitable[Mapping[str, Any]]]:
    """Fetches auth's JWKS over gRPC (``GetJwks``) as a JWKS dict, for :class:`JwksTokenVerifier`.

    ``channel`` is a channel to auth, or a callable returning it at fetch time (for channels
    created when the application starts, in its event loop). ``timeout`` is the call's deadline
    in seconds (None: the channel's default).
    """

    async def fetch() -> Mapping[str, Any]:
        current = channel() if callable(channel) else channel
        call = current.unary_unary(
            _GET_JWKS,
            request_serializer=auth_pb2.GetJwksRequest.SerializeToString,
            response_deserializer=auth_pb2.GetJwksResponse.FromString,
        )
        response = await call(auth_pb2.GetJwksRequest(), timeout=timeout)
        return MessageToDict(response)

    return fetch
