"""Cryptographic building blocks: argon2id passwords, envelope encryption of signing keys,
Ed25519/ES256 signing keys and their JWKs, opaque refresh tokens.

CPU only (no I/O); the argon2 work runs in worker threads (argon2-cffi releases the GIL) under a
semaphore, so logins neither block the event loop nor use unbounded memory.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import jwt
from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from jwt.algorithms import ECAlgorithm, OKPAlgorithm

__all__ = [
    "Argon2Params",
    "KeyEncryption",
    "KeyEncryptionError",
    "PasswordHashing",
    "SigningAlgorithm",
    "SigningKeyMaterial",
    "generate_signing_key",
    "hash_refresh_token",
    "jwk_thumbprint",
    "load_signing_key",
    "new_refresh_token",
    "parse_kek",
]

SigningAlgorithm = Literal["EdDSA", "ES256"]
PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey

# Passwords ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """argon2id cost parameters (RFC 9106); defaults are its low-memory recommendation."""

    time_cost: int = 3
    memory_cost_kib: int = 65_536
    parallelism: int = 4
    hash_len: int = 32
    salt_len: int = 16


class PasswordHashing:
    """argon2id hashing and verification in worker threads, at most ``concurrency`` at a time."""

    def __init__(self, params: Argon2Params, *, concurrency: int = 4) -> None:
        self._hasher = PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost_kib,
            parallelism=params.parallelism,
            hash_len=params.hash_len,
            salt_len=params.salt_len,
            type=Type.ID,
        )
        self._slots = asyncio.Semaphore(concurrency)
        # Verified against when the account (or client) does not exist, so an unknown name costs
        # the same as a wrong password. Hashed from random bytes nobody knows.
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(32))

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        """True when ``password`` matches; with ``password_hash`` None, burns the same time."""
        target = self._dummy_hash if password_hash is None else password_hash
        async with self._slots:
            ok = await asyncio.to_thread(self._verify_sync, target, password)
        return ok and password_hash is not None

    def _verify_sync(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    def needs_rehash(self, password_hash: str) -> bool:
        """True when the hash was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True


# Refresh tokens --------------------------------------------------------------------------------


def new_refresh_token() -> str:
    """256 random bits, base64url (43 characters)."""
    return secrets.token_urlsafe(32)


def hash_refresh_token(token: str) -> bytes:
    """What the database stores: SHA-256 of the token (a 256-bit secret needs no slow hash)."""
    return hashlib.sha256(token.encode("utf-8")).digest()


# Key encryption ----------------------------------------------------------------------------------


class KeyEncryptionError(RuntimeError):
    """A stored private key cannot be decrypted (unknown KEK, or the data was altered)."""


def parse_kek(value: str) -> bytes:
    """A key-encryption key from its base64 (standard or URL-safe) text: exactly 32 bytes."""
    text = value.strip().replace("-", "+").replace("_", "/")
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError:
        raise ValueError("the key-encryption key must be base64") from None
    if len(raw) != 32:
        raise ValueError("the key-encryption key must be 32 bytes (256 bits), base64-encoded")
    return raw


@dataclass(frozen=True)
class KeyEncryption:
    """AES-256-GCM envelope encryption of private signing keys with a key-encryption key (KEK).

    The ciphertext is bound to the key id (associated data), so a row's private key cannot be
    swapped into another row. ``previous`` KEKs still decrypt, for KEK rotation.
    """

    current: bytes = field(repr=False)
    previous: Sequence[bytes] = field(default=(), repr=False)

    @staticmethod
    def kek_id(kek: bytes) -> str:
        return hashlib.sha256(b"mercato-auth-kek:" + kek).hexdigest()[:16]

    @property
    def current_id(self) -> str:
        return self.kek_id(self.current)

    def encrypt(self, kid: str, plaintext: bytes) -> tuple[str, bytes]:
        """``(kek id, nonce || ciphertext || tag)``."""
        nonce = os.urandom(12)
        sealed = AESGCM(self.current).encrypt(nonce, plaintext, kid.encode())
        return self.current_id, nonce + sealed

    def decrypt(self, kek_id: str, kid: str, blob: bytes) -> bytes:
        for kek in (self.current, *self.previous):
            if self.kek_id(kek) == kek_id:
                try:
                    return AESGCM(kek).decrypt(blob[:12], blob[12:], kid.encode())
                except InvalidTag:
                    raise KeyEncryptionError(
                        f"private key {kid} does not decrypt (altered data or wrong KEK)"
                    ) from None
        raise KeyEncryptionError(f"private key {kid} was encrypted with an unknown KEK {kek_id}")


# Signing keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SigningKeyMaterial:
    kid: str
    alg: SigningAlgorithm
    private_key: PrivateKey = field(repr=False)
    public_jwk: dict[str, str]

    def private_der(self) -> bytes:
        return self.private_key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def sign(self, claims: dict[str, Any]) -> str:
        """A JWT access token (RFC 9068 ``typ: at+jwt``) signed by this key."""
        return jwt.encode(
            claims, self.private_key, algorithm=self.alg, headers={"kid": self.kid, "typ": "at+jwt"}
        )


def _public_jwk(private_key: PrivateKey, alg: SigningAlgorithm) -> dict[str, str]:
    if isinstance(private_key, Ed25519PrivateKey):
        jwk: dict[str, Any] = OKPAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    else:
        jwk = ECAlgorithm.to_jwk(private_key.public_key(), as_dict=True)
    return {k: str(v) for k, v in jwk.items() if k in ("kty", "crv", "x", "y")} | {
        "alg": alg,
        "use": "sig",
    }


def jwk_thumbprint(jwk: dict[str, str]) -> str:
    """RFC 7638 thumbprint (SHA-256, base64url): the key id, unique and derived from the key."""
    required = ("crv", "kty", "x") if jwk["kty"] == "OKP" else ("crv", "kty", "x", "y")
    canonical = json.dumps({k: jwk[k] for k in required}, separators=(",", ":"), sort_keys=True)
    digest = hashlib.sha256(canonical.encode()).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def _material(private_key: PrivateKey, alg: SigningAlgorithm) -> SigningKeyMaterial:
    jwk = _public_jwk(private_key, alg)
    kid = jwk_thumbprint(jwk)
    return SigningKeyMaterial(
        kid=kid, alg=alg, private_key=private_key, public_jwk=jwk | {"kid": kid}
    )


def generate_signing_key(alg: SigningAlgorithm) -> SigningKeyMaterial:
    private_key: PrivateKey
    if alg == "EdDSA":
        private_key = Ed25519PrivateKey.generate()
    elif alg == "ES256":
        private_key = ec.generate_private_key(ec.SECP256R1())
    else:  # pragma: no cover - Literal guards it
        raise ValueError(f"unsupported signing algorithm {alg}")
    return _material(private_key, alg)


def load_signing_key(alg: str, private_der: bytes) -> SigningKeyMaterial:
    private_key = serialization.load_der_private_key(private_der, password=None)
    if alg == "EdDSA" and isinstance(private_key, Ed25519PrivateKey):
        return _material(private_key, "EdDSA")
    if (
        alg == "ES256"
        and isinstance(private_key, ec.EllipticCurvePrivateKey)
        and isinstance(private_key.curve, ec.SECP256R1)
    ):
        return _material(private_key, "ES256")
    raise ValueError(f"stored key does not match its algorithm {alg}")
