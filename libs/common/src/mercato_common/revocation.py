"""Access-token revocation: a denylist in Redis that every verifier of access tokens reads.

Access tokens are self-contained JWTs, so a token that was logged out, or whose user was
disabled, would otherwise stay valid until it expires. Auth writes two kinds of entries, each
kept only as long as a token it covers can still be valid (its expiry plus the verifiers'
leeway), so the list stays as small as the set of live revoked tokens:

- ``<prefix>jti:<jti>``: one token, revoked (RFC 7009 revocation of an access token: logout);
- ``<prefix>sub:<subject>``: every token of the subject issued at or before the stored second
  (a disabled user: auth does not keep the ids of the access tokens it issued);
- ``<prefix>sid:<session>``: every token of a login session (the ``sid`` claim: the refresh
  token family it was issued with), when the family is revoked: logout with the refresh token,
  or a refresh token used twice (theft detection).

A verifier asks with one ``MGET`` (every key that applies to the token). It remembers a token's
clean answer for ``TOKEN_REVOCATION_CACHE_SECONDS`` (1 s by default), so a client sending the
same token with every request costs one Redis round trip a second per process, and a revocation
is in force everywhere at most that long after auth has written it.

When Redis cannot answer (error or timeout), the verifier logs it once per outage, skips Redis
for ``breaker_seconds`` and meanwhile does what ``TOKEN_REVOCATION_ON_ERROR`` says: ``open``
(default) accepts tokens that are valid otherwise (revocation is not enforced during the
outage; signature, expiry and audience still are), ``closed`` refuses every token with
UNAVAILABLE. Auth never acknowledges a revocation it could not write: the call fails with
UNAVAILABLE and may be retried (both writes are idempotent).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from redis.exceptions import RedisError

from mercato_common.errors import Unavailable
from mercato_common.redis_client import RedisBreaker, fail_fast_redis

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from mercato_common.settings import TokenSettings

__all__ = ["RevocationUnavailable", "TokenRevocations", "token_revocations"]

_log = logging.getLogger("mercato_common.revocation")


class RevocationUnavailable(Unavailable):
    default_reason = "REVOCATION_UNAVAILABLE"
    default_message = "the token revocation list cannot be reached; retry shortly"


@dataclass(kw_only=True)
class TokenRevocations:
    """Writes (auth) and reads (every verifier) the denylist; see the module doc."""

    redis: Redis
    prefix: str
    leeway_seconds: float
    on_error: Literal["open", "closed"] = "open"
    breaker: RedisBreaker = field(default_factory=lambda: RedisBreaker(2.0))
    wall_clock: Callable[[], float] = time.time

    def _token_key(self, token_id: str) -> str:
        return f"{self.prefix}jti:{token_id}"

    def _subject_key(self, subject: str) -> str:
        return f"{self.prefix}sub:{subject}"

    def _session_key(self, session_id: str) -> str:
        return f"{self.prefix}sid:{session_id}"

    async def revoke_token(self, token_id: str, expires_at: int) -> None:
        """Deny one token (by its ``jti``) until it would have expired anyway."""
        until = math.ceil(expires_at + self.leeway_seconds)
        if until <= self.wall_clock():
            return  # expired: no verifier accepts it any more
        await self._write(self._token_key(token_id), "1", until)

    async def revoke_subject(self, subject: str, *, issued_until: int, lifetime: float) -> None:
        """Deny every token of ``subject`` issued at or before ``issued_until`` (seconds since
        the epoch); ``lifetime`` is the longest an access token lives."""
        until = math.ceil(issued_until + lifetime + self.leeway_seconds)
        await self._write(self._subject_key(subject), str(issued_until), until)

    async def revoke_session(self, session_id: str, *, lifetime: float) -> None:
        """Deny every token of a login session (its ``sid``): a revoked refresh token family
        issues no more, so the entry lives as long as the youngest may (``lifetime``)."""
        until = math.ceil(self.wall_clock() + lifetime + self.leeway_seconds)
        await self._write(self._session_key(session_id), "1", until)

    async def _write(self, key: str, value: str, until: int) -> None:
        try:
            await self.redis.set(key, value, exat=until)
        except (RedisError, OSError, TimeoutError) as error:
            _log.warning("token revocation not written", extra={"error": type(error).__name__})
            raise RevocationUnavailable() from None

    async def revoked(
        self,
        *,
        subject: str,
        token_id: str,
        issued_at: int | None,
        session_id: str | None = None,
    ) -> bool:
        """Whether a verified token (its ``sub``, ``jti``, ``iat`` and ``sid`` if any) is denied
        (see the module doc for outages)."""
        if not self.breaker.allows():
            return self._answer_without_redis()
        keys = [self._subject_key(subject), self._token_key(token_id)]
        if session_id:
            keys.append(self._session_key(session_id))
        try:
            subject_cutoff, token_entry, *session_entry = await self.redis.mget(keys)
        except (RedisError, OSError, TimeoutError) as error:
            if self.breaker.failed():
                _log.warning(
                    "token revocation list unreachable",
                    extra={"error": type(error).__name__, "on_error": self.on_error},
                )
            return self._answer_without_redis()
        if self.breaker.succeeded():
            _log.info("token revocation list reachable again")
        if token_entry is not None or any(entry is not None for entry in session_entry):
            return True
        if subject_cutoff is None:
            return False
        return issued_at is None or issued_at <= int(subject_cutoff)

    def _answer_without_redis(self) -> bool:
        if self.on_error == "closed":
            raise RevocationUnavailable()
        return False

    async def close(self) -> None:
        await self.redis.aclose()


def token_revocations(settings: TokenSettings) -> TokenRevocations | None:
    """The denylist the process's settings name (its own Redis client: the caller closes it on
    stop); None when ``REDIS_URL`` is empty (revocation is then not checked)."""
    if not settings.redis_url:
        return None
    return TokenRevocations(
        redis=fail_fast_redis(settings.redis_url, timeout_ms=settings.redis_timeout_ms),
        prefix=settings.token_revocation_prefix,
        leeway_seconds=settings.token_leeway_seconds,
        on_error=settings.token_revocation_on_error,
        breaker=RedisBreaker(settings.token_revocation_breaker_seconds),
    )
