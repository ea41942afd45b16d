"""The access-token revocation list on the stack's real Redis, and the verifier reading it."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from redis.asyncio import Redis

from mercato_common.errors import Unauthenticated
from mercato_common.identity import JwksTokenVerifier
from mercato_common.redis_client import RedisBreaker, fail_fast_redis
from mercato_common.revocation import RevocationUnavailable, TokenRevocations
from mercato_devstack.fixtures import backends, redis_prefix, redis_url

__all__ = ["backends", "redis_prefix", "redis_url"]

pytestmark = pytest.mark.integration

LEEWAY = 30
ISSUER = "https://auth.mercato.test"
AUDIENCE = "mercato"


class Keys:
    """One signing key, its JWKS, and access tokens it signs."""

    def __init__(self) -> None:
        self.private = Ed25519PrivateKey.generate()

    async def jwks(self) -> dict[str, Any]:
        jwk = jwt.algorithms.OKPAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "EdDSA"}]}

    def token(self, jti: str) -> str:
        now = int(time.time())
        claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": "user-1", "iat": now, "exp": now + 900}
        headers = {"kid": "k1", "typ": "at+jwt"}
        return jwt.encode({**claims, "jti": jti}, self.private, algorithm="EdDSA", headers=headers)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest_asyncio.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = fail_fast_redis(redis_url, timeout_ms=500)
    yield client
    await client.aclose()


def _revocations(redis: Redis, prefix: str, **options: Any) -> TokenRevocations:
    return TokenRevocations(redis=redis, prefix=prefix, leeway_seconds=LEEWAY, **options)


async def test_a_revoked_token_is_kept_only_while_it_could_be_valid(
    redis: Redis, redis_prefix: str
) -> None:
    revocations = _revocations(redis, redis_prefix)
    expires = int(time.time()) + 600
    await revocations.revoke_token("jti-1", expires)
    assert await revocations.revoked(subject="u1", token_id="jti-1", issued_at=None)
    assert not await revocations.revoked(subject="u1", token_id="jti-2", issued_at=None)
    ttl = await redis.ttl(f"{redis_prefix}jti:jti-1")
    assert 600 + LEEWAY - 5 <= ttl <= 600 + LEEWAY + 1
    # A token past its expiry and leeway is refused by every verifier anyway: nothing written.
    await revocations.revoke_token("jti-old", int(time.time()) - LEEWAY - 5)
    assert await redis.exists(f"{redis_prefix}jti:jti-old") == 0


async def test_a_subject_cutoff_denies_older_tokens_only(redis: Redis, redis_prefix: str) -> None:
    revocations = _revocations(redis, redis_prefix)
    cutoff = int(time.time())
    await revocations.revoke_subject("u1", issued_until=cutoff, lifetime=900)
    assert await revocations.revoked(subject="u1", token_id="a", issued_at=cutoff - 100)
    assert await revocations.revoked(subject="u1", token_id="b", issued_at=cutoff)
    assert not await revocations.revoked(subject="u1", token_id="c", issued_at=cutoff + 1)
    assert not await revocations.revoked(subject="u2", token_id="d", issued_at=cutoff - 100)
    ttl = await redis.ttl(f"{redis_prefix}sub:u1")
    assert 900 + LEEWAY - 5 <= ttl <= 900 + LEEWAY + 1


async def test_a_revoked_session_denies_its_tokens_only(redis: Redis, redis_prefix: str) -> None:
    revocations = _revocations(redis, redis_prefix)
    now = int(time.time())
    await revocations.revoke_session("family-1", lifetime=900)
    assert await revocations.revoked(
        subject="u1", token_id="a", issued_at=now, session_id="family-1"
    )
    assert not await revocations.revoked(
        subject="u1", token_id="b", issued_at=now, session_id="family-2"
    )
    # A service client's token has no session: only its jti and subject are asked about.
    assert not await revocations.revoked(subject="u1", token_id="c", issued_at=now)
    ttl = await redis.ttl(f"{redis_prefix}sid:family-1")
    assert 900 + LEEWAY - 5 <= ttl <= 900 + LEEWAY + 1


async def test_the_verifier_refuses_a_revoked_token_after_its_clean_answer_lapses(
    redis: Redis, redis_prefix: str
) -> None:
    keys = Keys()
    clock = Clock()
    revocations = _revocations(redis, redis_prefix)
    verifier = JwksTokenVerifier(
        keys.jwks,
        issuer=ISSUER,
        audience=AUDIENCE,
        revocations=revocations,
        revocation_cache_seconds=1.0,
        clock=clock,
    )
    token = keys.token("jti-v")
    identity = await verifier.verify(token)
    assert identity.issued_at is not None
    await revocations.revoke_token("jti-v", identity.expires_at or 0)
    # Within the second a clean answer is remembered, the token is still answered from memory.
    assert (await verifier.verify(token)).subject == identity.subject
    clock.now += 1.0
    with pytest.raises(Unauthenticated) as refused:
        await verifier.verify(token)
    assert refused.value.reason == "TOKEN_REVOKED"
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)  # not remembered as verified any more either


@pytest.mark.parametrize("on_error", ["open", "closed"])
async def test_an_unreachable_list_follows_the_policy_and_skips_redis_for_a_while(
    redis_prefix: str, on_error: str
) -> None:
    # Nothing listens on port 9 of loopback: every command fails at once.
    unreachable = fail_fast_redis("redis://127.0.0.1:9/0", timeout_ms=200)
    clock = Clock()
    revocations = _revocations(
        unreachable, redis_prefix, on_error=on_error, breaker=RedisBreaker(2.0, clock)
    )
    for _ in range(2):  # the second answer comes from the breaker, without a connection
        if on_error == "open":
            assert not await revocations.revoked(subject="u1", token_id="t", issued_at=1)
        else:
            with pytest.raises(RevocationUnavailable):
                await revocations.revoked(subject="u1", token_id="t", issued_at=1)
    with pytest.raises(RevocationUnavailable):
        await revocations.revoke_token("t", int(time.time()) + 60)
    await unreachable.aclose()
