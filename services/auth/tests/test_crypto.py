"""argon2id, key encryption, signing keys and their JWKs, refresh tokens."""

from __future__ import annotations

import base64
import os
import statistics
import time
from typing import Any

import jwt
import pytest

from mercato_auth.crypto import (
    Argon2Params,
    KeyEncryption,
    KeyEncryptionError,
    PasswordHashing,
    generate_signing_key,
    hash_refresh_token,
    jwk_thumbprint,
    load_signing_key,
    new_refresh_token,
    parse_kek,
)
from mercato_common.identity import JwksTokenVerifier

CHEAP = Argon2Params(time_cost=1, memory_cost_kib=1024, parallelism=1)


async def test_passwords_hash_verify_and_rehash() -> None:
    hashing = PasswordHashing(CHEAP)
    hashed = await hashing.hash("a long enough password")
    assert hashed.startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert await hashing.verify(hashed, "a long enough password")
    assert not await hashing.verify(hashed, "another password!")
    assert not await hashing.verify("not a hash", "a long enough password")
    assert not await hashing.verify(None, "a long enough password")
    assert not hashing.needs_rehash(hashed)
    stronger = PasswordHashing(Argon2Params(time_cost=2, memory_cost_kib=2048, parallelism=1))
    assert stronger.needs_rehash(hashed)
    assert await stronger.verify(hashed, "a long enough password")  # old hashes still verify
    assert stronger.needs_rehash("garbage")


async def test_unknown_account_costs_as_much_as_a_wrong_password() -> None:
    hashing = PasswordHashing(Argon2Params(time_cost=2, memory_cost_kib=8192, parallelism=1))
    hashed = await hashing.hash("a long enough password")

    async def timed(target: str | None) -> float:
        started = time.perf_counter()
        await hashing.verify(target, "wrong password!!")
        return time.perf_counter() - started

    known, unknown = [], []
    for _ in range(15):  # interleaved, so machine load hits both alike
        known.append(await timed(hashed))
        unknown.append(await timed(None))
    ratio = statistics.median(unknown) / statistics.median(known)
    assert 0.6 < ratio < 1.6


def test_refresh_tokens_are_256_random_bits_stored_as_sha256() -> None:
    token = new_refresh_token()
    assert len(base64.urlsafe_b64decode(token + "=")) == 32
    assert token != new_refresh_token()
    digest = hash_refresh_token(token)
    assert len(digest) == 32
    assert digest == hash_refresh_token(token)


def test_kek_parsing() -> None:
    raw = os.urandom(32)
    assert parse_kek(base64.b64encode(raw).decode()) == raw
    assert parse_kek(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    for bad in ("", "not base64 !", base64.b64encode(os.urandom(16)).decode()):
        with pytest.raises(ValueError, match="key-encryption key"):
            parse_kek(bad)


def test_key_encryption_binds_the_kid_and_supports_kek_rotation() -> None:
    old, new = os.urandom(32), os.urandom(32)
    sealed_by_old = KeyEncryption(old)
    kek_id, blob = sealed_by_old.encrypt("kid-1", b"private key bytes")
    assert b"private key bytes" not in blob
    assert sealed_by_old.decrypt(kek_id, "kid-1", blob) == b"private key bytes"
    with pytest.raises(KeyEncryptionError, match="does not decrypt"):
        sealed_by_old.decrypt(kek_id, "kid-2", blob)  # moved to another row
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(KeyEncryptionError):
        sealed_by_old.decrypt(kek_id, "kid-1", tampered)
    with pytest.raises(KeyEncryptionError, match="unknown KEK"):
        KeyEncryption(new).decrypt(kek_id, "kid-1", blob)
    rotated = KeyEncryption(new, previous=(old,))
    assert rotated.decrypt(kek_id, "kid-1", blob) == b"private key bytes"
    assert rotated.encrypt("kid-1", b"x")[0] != kek_id
    assert repr(old) not in repr(rotated)


def test_rfc_8037_thumbprint() -> None:
    # RFC 8037 appendix A.3.
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


@pytest.mark.parametrize(
    ("alg", "kty", "crv"), [("EdDSA", "OKP", "Ed25519"), ("ES256", "EC", "P-256")]
)
async def test_signing_keys_round_trip_and_verify(alg: Any, kty: str, crv: str) -> None:
    key = generate_signing_key(alg)
    assert key.public_jwk["kid"] == key.kid == jwk_thumbprint(key.public_jwk)
    assert (key.public_jwk["kty"], key.public_jwk["crv"], key.public_jwk["alg"]) == (kty, crv, alg)
    assert "d" not in key.public_jwk  # no private part in the JWK
    loaded = load_signing_key(alg, key.private_der())
    assert loaded.kid == key.kid
    with pytest.raises(ValueError, match="does not match"):
        load_signing_key("ES256" if alg == "EdDSA" else "EdDSA", key.private_der())

    now = int(time.time())
    token = loaded.sign(
        {
            "iss": "https://api.example",
            "aud": "mercato",
            "sub": "u1",
            "iat": now,
            "exp": now + 60,
            "jti": "j",
            "scope": "catalog:read",
            "client_id": "mercato-web",
        }
    )
    header = jwt.get_unverified_header(token)
    assert header == {"alg": alg, "kid": key.kid, "typ": "at+jwt"}

    async def jwks() -> dict[str, Any]:
        return {"keys": [key.public_jwk]}

    verifier = JwksTokenVerifier(jwks, issuer="https://api.example", audience="mercato")
    identity = await verifier.verify(token)
    assert identity.subject == "u1"
    assert identity.scopes == {"catalog:read"}
