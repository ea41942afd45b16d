"""The signing keys: kept in PostgreSQL (private parts encrypted), cached per replica, rotated.

Every replica signs with the ``active`` key, reloaded from the database at most
``refresh_interval`` after another replica rotated it. The ``next`` key is published a whole
rotation period before it signs; a retired key stays published until every token it may have
signed has expired (token lifetime + verifier leeway + the replicas' reload lag).

The ring is a lifecycle part (``start`` makes sure the keys exist and loads them); the scheduled
rotation and reload (:meth:`KeyRing.maintain`) run as a job (:mod:`mercato_auth.jobs`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass, field
from datetime import datetime, timedelta
from typing import Any

from mercato_auth.crypto import (
    KeyEncryption,
    SigningAlgorithm,
    SigningKeyMaterial,
    generate_signing_key,
    load_signing_key,
)
from mercato_auth.domain.errors import SigningKeyUnavailable
from mercato_auth.domain.keys import KeyState, publish_until, rotation_due
from mercato_auth.store import AuthStore, StoredSigningKey, Tx
from mercato_common.clock import utcnow

__all__ = ["KeyRing", "RotationResult"]

_log = logging.getLogger("mercato_auth.keys")


@dataclass(frozen=True, slots=True)
class RotationResult:
    kid: str
    alg: str
    previous_kid: str
    activate_time: datetime


@dataclass(eq=False, repr=False)
class KeyRing:
    """Signing keys of the token issuer; a lifecycle part (``start`` ensures keys exist)."""

    store: AuthStore
    encryption: KeyEncryption
    _: KW_ONLY
    algorithm: SigningAlgorithm
    token_lifetime: timedelta
    verifier_leeway: timedelta
    rotation_interval: timedelta
    # Seconds between reloads of the active key (and checks whether rotation is due).
    refresh_interval: float
    clock: Callable[[], datetime] = utcnow
    _active: SigningKeyMaterial | None = field(default=None, init=False)
    _loaded_at: float = field(default=0.0, init=False)
    _reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)

    @property
    def _margin(self) -> timedelta:
        """The verifier leeway plus the replicas' reload lag."""
        return self.verifier_leeway + timedelta(seconds=2 * self.refresh_interval)

    # Lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.ensure()
        await self.reload()

    async def stop(self) -> None:
        return None

    async def maintain(self) -> None:
        """Rotate when due, then reload: another replica may have rotated meanwhile."""
        await self.rotate(scheduled=True)
        await self.reload()

    # Keys ----------------------------------------------------------------------------------

    def _new_key(self) -> SigningKeyMaterial:
        return generate_signing_key(self.algorithm)

    async def _insert(self, tx: Tx, key: SigningKeyMaterial, state: KeyState) -> None:
        kek_id, sealed = self.encryption.encrypt(key.kid, key.private_der())
        await tx.signing_keys.insert(
            kid=key.kid,
            alg=key.alg,
            state=state,
            public_jwk=key.public_jwk,
            private_key_enc=sealed,
            kek_id=kek_id,
            now=self.clock(),
        )

    async def ensure(self) -> None:
        """Make sure an active and a next key (of the configured algorithm) exist."""
        async with self.store.write() as tx:
            await tx.signing_keys.lock()
            live = await tx.signing_keys.live()
            upcoming = live.get(KeyState.NEXT)
            if upcoming is not None and upcoming.info.alg != self.algorithm:
                # The algorithm setting changed: the unused next key is replaced.
                await tx.signing_keys.delete(upcoming.info.kid)
                upcoming = None
            if KeyState.ACTIVE not in live:
                if upcoming is not None:
                    await tx.signing_keys.activate(upcoming.info.kid, now=self.clock())
                    upcoming = None
                else:
                    await self._insert(tx, self._new_key(), KeyState.ACTIVE)
                    _log.info("created the first signing key")
            if upcoming is None:
                await self._insert(tx, self._new_key(), KeyState.NEXT)

    async def rotate(self, *, scheduled: bool = False) -> RotationResult | None:
        """Retire the active key, activate the next one, create a new next one.

        A scheduled rotation does nothing unless the active key is older than the rotation
        interval (checked under the lock, so concurrent replicas rotate once).
        """
        now = self.clock()
        async with self.store.write() as tx:
            await tx.signing_keys.lock()
            live = await tx.signing_keys.live()
            active = live.get(KeyState.ACTIVE)
            if scheduled and (
                active is None or not rotation_due(active.info, now, self.rotation_interval)
            ):
                return None
            upcoming = live.get(KeyState.NEXT)
            if active is not None:
                until = publish_until(now, self.token_lifetime, self._margin)
                await tx.signing_keys.retire(active.info.kid, now=now, publish_until=until)
            if upcoming is not None and upcoming.info.alg == self.algorithm:
                new_kid, new_alg = upcoming.info.kid, upcoming.info.alg
                await tx.signing_keys.activate(new_kid, now=now)
            else:
                if upcoming is not None:
                    await tx.signing_keys.delete(upcoming.info.kid)
                fresh = self._new_key()
                await self._insert(tx, fresh, KeyState.ACTIVE)
                new_kid, new_alg = fresh.kid, fresh.alg
            await self._insert(tx, self._new_key(), KeyState.NEXT)
        previous = active.info.kid if active is not None else ""
        _log.info(
            "rotated the signing key",
            extra={"kid": new_kid, "previous_kid": previous, "scheduled": scheduled},
        )
        await self.reload()
        return RotationResult(kid=new_kid, alg=new_alg, previous_kid=previous, activate_time=now)

    async def reload(self) -> None:
        async with self._reload_lock:
            async with self.store.read() as tx:
                live = await tx.signing_keys.live()
            active = live.get(KeyState.ACTIVE)
            self._active = None if active is None else self._decrypt(active)
            self._loaded_at = time.monotonic()

    def _decrypt(self, stored: StoredSigningKey) -> SigningKeyMaterial:
        der = self.encryption.decrypt(stored.kek_id, stored.info.kid, stored.private_key_enc)
        material = load_signing_key(stored.info.alg, der)
        if material.kid != stored.info.kid:
            raise ValueError(f"stored key {stored.info.kid} does not match its public key")
        return material

    async def signing_key(self) -> SigningKeyMaterial:
        """The active key, reloaded when the cached copy is older than the refresh interval."""
        if self._active is None or time.monotonic() - self._loaded_at > self.refresh_interval:
            try:
                await self.reload()
            except Exception:
                if self._active is None:
                    raise SigningKeyUnavailable() from None
                _log.warning("could not reload the signing key; using the cached one")
        if self._active is None:
            raise SigningKeyUnavailable()
        return self._active

    async def jwks(self) -> list[dict[str, str]]:
        """The published public keys (next, active, and retired ones still needed)."""
        async with self.store.read() as tx:
            keys = await tx.signing_keys.published(self.clock())
        return [dict(key.public_jwk) for key in keys]

    async def jwks_document(self) -> dict[str, Any]:
        """``{"keys": [...]}``: what :class:`JwksTokenVerifier` fetches (in-process, no RPC)."""
        return {"keys": await self.jwks()}

    async def prune(self, keep_for: timedelta = timedelta(days=1)) -> int:
        async with self.store.write() as tx:
            return await tx.signing_keys.delete_unpublished(self.clock() - keep_for)
