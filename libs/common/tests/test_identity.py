import base64
import hashlib
import hmac
import json
import time
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from mercato.auth.v1 import auth_pb2
from mercato_common.errors import PermissionDenied, Unauthenticated, Unavailable
from mercato_common.identity import (
    AccessPolicy,
    Audience,
    Identity,
    JwksTokenVerifier,
    auth_jwks_fetcher,
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


async def test_unreachable_keys_are_unavailable_and_fetched_again_on_the_next_call() -> None:
    """Auth unreachable (a restart, a DNS gap) while a kid is unknown: the caller gets a
    retryable UNAVAILABLE (not an internal error, not a refusal of the token), and the next
    call fetches again."""
    keys = Keys()
    keys.add("k1")
    down = [True]

    async def fetch() -> dict[str, Any]:
        if down[0]:
            raise grpc.aio.AioRpcError(
                grpc.StatusCode.UNAVAILABLE, grpc.aio.Metadata(), grpc.aio.Metadata(), "no address"
            )
        return await keys.jwks()

    verifier = JwksTokenVerifier(fetch, issuer=ISSUER, audience=AUDIENCE)
    with pytest.raises(Unavailable) as caught:
        await verifier.verify(keys.token("k1"))
    assert caught.value.reason == "JWKS_UNAVAILABLE"
    down[0] = False
    assert (await verifier.verify(keys.token("k1"))).subject == "user-1"
    assert keys.fetches == 1


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


def _forge(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def _claims() -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "admin",
        "iat": now,
        "exp": now + 900,
        "jti": "forged",
        "scope": "users:admin",
    }


async def test_rejects_an_unsigned_token_alg_none() -> None:
    keys = Keys()
    keys.add("k1")
    token = _forge({"alg": "none", "typ": "at+jwt", "kid": "k1"}, _claims())
    with pytest.raises(Unauthenticated):
        await _verifier(keys).verify(token)


async def test_rejects_hs256_signed_with_the_public_key_as_secret() -> None:
    keys = Keys()
    keys.add("k1")
    public_pem = (
        keys.private["k1"]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "typ": "at+jwt", "kid": "k1"}
    unsigned = _forge(header, _claims()).rsplit(".", 1)[0]
    mac = hmac.new(public_pem, unsigned.encode(), hashlib.sha256).digest()
    token = unsigned + "." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
    with pytest.raises(Unauthenticated):
        await _verifier(keys).verify(token)


async def test_rejects_an_unknown_kid() -> None:
    keys = Keys()
    keys.add("k1")
    stranger = Keys()
    stranger.add("k9")
    with pytest.raises(Unauthenticated, match="key is unknown"):
        await _verifier(keys).verify(stranger.token("k9"))


async def test_rejects_a_token_not_yet_valid() -> None:
    keys = Keys()
    keys.add("k1")
    with pytest.raises(Unauthenticated):
        await _verifier(keys).verify(keys.token("k1", nbf=int(time.time()) + 3600))


class FakeAuthChannel:
    """Answers GetJwks like auth's channel would; records the method and the deadline."""

    def __init__(self, response: auth_pb2.GetJwksResponse) -> None:
        self.response = response
        self.calls: list[tuple[str, float | None]] = []

    def unary_unary(self, method: str, request_serializer: Any, response_deserializer: Any) -> Any:
        async def call(request: auth_pb2.GetJwksRequest, timeout: float | None = None) -> Any:  # noqa: ASYNC109
            self.calls.append((method, timeout))
            assert request_serializer(request) == b""
            return response_deserializer(self.response.SerializeToString())

        return call


async def test_auth_jwks_fetcher_turns_get_jwks_into_a_jwks_dict() -> None:
    response = auth_pb2.GetJwksResponse(
        keys=[
            auth_pb2.JsonWebKey(kty="OKP", use="sig", kid="k1", alg="EdDSA", crv="Ed25519", x="AA")
        ]
    )
    channel = FakeAuthChannel(response)
    jwks = await auth_jwks_fetcher(channel)()  # type: ignore[arg-type]
    assert jwks == {
        "keys": [
            {"kty": "OKP", "use": "sig", "kid": "k1", "alg": "EdDSA", "crv": "Ed25519", "x": "AA"}
        ]
    }
    assert channel.calls == [("/mercato.auth.v1.AuthService/GetJwks", None)]
    # A channel made later (at application start) is looked up at each fetch.
    late = auth_jwks_fetcher(lambda: channel, timeout=3.0)  # type: ignore[arg-type,return-value]
    await late()
    assert channel.calls[-1] == ("/mercato.auth.v1.AuthService/GetJwks", 3.0)


class CountingDecode:
    """Counts the signature checks the verifier makes (jwt.decode calls)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = jwt.decode

        def decode(*args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jwt, "decode", decode)


async def test_a_verified_token_is_remembered_until_the_cache_time_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = Keys()
    keys.add("k1")
    decodes = CountingDecode(monkeypatch)
    clock = [1000.0]
    verifier = _verifier(keys, cache_seconds=60, clock=lambda: clock[0])
    token = keys.token("k1")
    first = await verifier.verify(token)
    assert await verifier.verify(token) == first
    assert decodes.calls == 1
    clock[0] += 61
    assert await verifier.verify(token) == first
    assert decodes.calls == 2


async def test_a_remembered_token_is_checked_again_once_expired(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = Keys()
    keys.add("k1")
    decodes = CountingDecode(monkeypatch)
    now = [time.time()]
    verifier = _verifier(keys, leeway_seconds=0, cache_seconds=3600, wall_clock=lambda: now[0])
    token = keys.token("k1", exp=int(now[0]) + 5)
    await verifier.verify(token)
    await verifier.verify(token)
    assert decodes.calls == 1
    now[0] += 6  # past exp by the verifier's clock: the cache must not answer any more
    await verifier.verify(token)  # (PyJWT's own clock has not moved, so it still accepts)
    assert decodes.calls == 2


async def test_rejected_tokens_are_not_remembered_and_a_withdrawn_key_forgets(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    keys = Keys()
    keys.add("k1")
    decodes = CountingDecode(monkeypatch)
    clock = [1000.0]
    verifier = _verifier(keys, min_refresh_seconds=1, clock=lambda: clock[0])
    wrong_audience = keys.token("k1", aud="someone-else")
    for _ in range(2):
        with pytest.raises(Unauthenticated):
            await verifier.verify(wrong_audience)
    assert decodes.calls == 2
    token = keys.token("k1")
    await verifier.verify(token)
    # k1 is withdrawn from the JWKS; the next refetch (triggered by a new kid) forgets k1's
    # tokens, which then fail as signed by an unknown key.
    del keys.private["k1"]
    keys.add("k2")
    clock[0] += 2
    await verifier.verify(keys.token("k2"))
    with pytest.raises(Unauthenticated):
        await verifier.verify(token)


async def test_the_cache_is_bounded() -> None:
    keys = Keys()
    keys.add("k1")
    verifier = _verifier(keys, cache_size=3)
    for n in range(10):
        await verifier.verify(keys.token("k1", jti=f"t-{n}"))
        assert len(verifier._verified) <= 3


async def test_the_remembered_tokens_stay_out_of_the_repr() -> None:
    keys = Keys()
    keys.add("k1")
    verifier = _verifier(keys)
    token = keys.token("k1")
    await verifier.verify(token)
    assert token in verifier._verified
    assert token not in repr(verifier)
    assert ISSUER in repr(verifier)
