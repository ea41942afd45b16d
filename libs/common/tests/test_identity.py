import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mercato_common.errors import PermissionDenied, Unauthenticated
from mercato_common.identity import (
    AccessPolicy,
    Audience,
    Identity,
    JwksTokenVerifier,
    check_access,
)

ISSUER = "https://auth.mercato.test"
AUDIENCE = "mercato"


class Keys:
    def __init__(self) -> None:
        self.private: dict[str, Ed25519PrivateKey] = {}
        self.fetches = 0

    def add(self, kid: str) -> None:
        self.private[kid] = Ed25519PrivateKey.generate()

    async def jwks(self) -> dict[str, Any]:
        self.fetches += 1
        keys = []
        for kid, key in self.private.items():
            jwk = jwt.algorithms.OKPAlgorithm.to_jwk(key.public_key(), as_dict=True)
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "EdDSA"})
        return {"keys": keys}

    def token(self, kid: str, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": "user-1",
            "iat": now,
            "exp": now + 900,
            "jti": "t-1",
            "client_id": "web",
            "scope": "catalog:read orders:read",
        }
        claims.update(overrides)
        headers = {"kid": kid, "typ": "at+jwt"}
        return jwt.encode(claims, self.private[kid], algorithm="EdDSA", headers=headers)


def _verifier(keys: Keys, **kwargs: Any) -> JwksTokenVerifier:
    return JwksTokenVerifier(keys.jwks, issuer=ISSUER, audience=AUDIENCE, **kwargs)


async def test_verifies_a_valid_token() -> None:
    keys = Keys()
    keys.add("k1")
    identity = await _verifier(keys).verify(keys.token("k1"))
    assert identity.subject == "user-1"
    assert identity.scopes == frozenset({"catalog:read", "orders:read"})
    assert identity.client_id == "web"


@pytest.mark.parametrize(
    ("overrides", "reason"),
    [
        ({"exp": int(time.time()) - 3600}, "TOKEN_EXPIRED"),
        ({"aud": "someone-else"}, "TOKEN_INVALID"),
        ({"iss": "https://evil.test"}, "TOKEN_INVALID"),
    ],
)
async def test_rejects_bad_claims(overrides: dict[str, Any], reason: str) -> None:
    keys = Keys()
    keys.add("k1")
    with pytest.raises(Unauthenticated) as caught:
        await _verifier(keys).verify(keys.token("k1", **overrides))
    assert caught.value.reason == reason


async def test_rejects_a_token_signed_by_an_unknown_key_and_a_tampered_one() -> None:
    keys, other = Keys(), Keys()
    keys.add("k1")
    other.add("k1")
    verifier = _verifier(keys)
    with pytest.raises(Unauthenticated):
        await verifier.verify(other.token("k1"))
    header, payload, signature = keys.token("k1").split(".")
    with pytest.raises(Unauthenticated):
        await verifier.verify(f"{header}.{payload}x.{signature}")


async def test_rejects_tokens_that_are_not_access_tokens() -> None:
    keys = Keys()
    keys.add("k1")
    now = int(time.time())
    id_token = jwt.encode(
        {"iss": ISSUER, "aud": AUDIENCE, "sub": "u", "iat": now, "exp": now + 60, "jti": "j"},
        keys.private["k1"],
        algorithm="EdDSA",
        headers={"kid": "k1", "typ": "JWT"},
    )
    with pytest.raises(Unauthenticated, match="not an access token"):
        await _verifier(keys).verify(id_token)
    with pytest.raises(Unauthenticated):
        await _verifier(keys).verify("not-a-jwt")


async def test_rotation_refetches_once_for_a_new_kid_and_rate_limits_refetches() -> None:
    keys = Keys()
    keys.add("k1")
    clock = [1000.0]
    verifier = _verifier(keys, min_refresh_seconds=30, clock=lambda: clock[0])
    await verifier.verify(keys.token("k1"))
    assert keys.fetches == 1
    keys.add("k2")
    clock[0] += 31
    await verifier.verify(keys.token("k2"))
    assert keys.fetches == 2
    forged = Keys()
    forged.add("k3")
    for _ in range(5):
        with pytest.raises(Unauthenticated):
            await verifier.verify(forged.token("k3"))
    assert keys.fetches == 2


def test_access_rules() -> None:
    customer = Identity("u1", frozenset({"orders:read", "orders:write"}))
    check_access(AccessPolicy(Audience.PUBLIC), None)
    check_access(AccessPolicy(Audience.AUTHENTICATED), customer)
    check_access(AccessPolicy(Audience.SCOPED, frozenset({"orders:write"})), customer)
    with pytest.raises(Unauthenticated):
        check_access(AccessPolicy(Audience.AUTHENTICATED), None)
    with pytest.raises(PermissionDenied) as caught:
        check_access(AccessPolicy(Audience.SCOPED, frozenset({"orders:fulfill"})), customer)
    assert caught.value.metadata == {"missing_scopes": "orders:fulfill"}
