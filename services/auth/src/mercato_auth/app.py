"""The auth service, declared for the kit (``mercato_common.kit``).

Its parts, in start order: the PostgreSQL store (migrations; the outbox table is migration 2),
the signing keys (loaded, or created at first start), the bootstrap (admin and service clients),
the outbox relay, the jobs (signing-key maintenance, housekeeping), then what the kit adds to
every service (saturation metrics, the gRPC server, the health watch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Unpack

from mercato.auth.v1 import auth_pb2_grpc
from mercato_auth.api import SERVICE_NAME, AuthServicer
from mercato_auth.commands import COMMANDS
from mercato_auth.crypto import KeyEncryption, PasswordHashing
from mercato_auth.domain.errors import AuthError, AuthUnavailable
from mercato_auth.jobs import housekeeping, key_maintenance
from mercato_auth.service import (
    AuthMetrics,
    AuthService,
    KeyRing,
    ThrottlePolicies,
    TokenSettings,
)
from mercato_auth.settings import AuthSettings
from mercato_auth.store import AuthStore, Database
from mercato_common.identity import JwksTokenVerifier
from mercato_common.kit import App, Definition, KitOptions, Service
from mercato_common.revocation import token_revocations

__all__ = ["DEFINITION", "AuthApp", "Bootstrap", "build_app"]

_log = logging.getLogger("mercato_auth")


@dataclass
class AuthApp(App):
    """The declared service and the objects its commands and tests reach."""

    database: Database
    store: AuthStore
    keys: KeyRing
    service: AuthService
    verifier: JwksTokenVerifier


@dataclass(eq=False)
class Bootstrap:
    """Ensures the bootstrap admin and the configured service clients at start."""

    service: AuthService
    settings: AuthSettings = field(repr=False)

    async def start(self) -> None:
        settings = self.settings
        if settings.bootstrap_admin_email and settings.bootstrap_admin_password:
            try:
                user, created = await self.service.ensure_admin(
                    settings.bootstrap_admin_email,
                    settings.bootstrap_admin_password.get_secret_value(),
                )
            except AuthError as error:  # a bad password policy or email: say which, not what
                raise RuntimeError(f"bootstrap admin refused: {error.message}") from None
            _log.info(
                "bootstrap admin ensured", extra={"user_id": user.id, "admin_created": created}
            )
        for client in settings.service_clients:
            await self.service.ensure_client(
                client.client_id,
                client.secret.get_secret_value(),
                client.scopes,
                [previous.get_secret_value() for previous in client.previous_secrets],
            )

    async def stop(self) -> None:
        return None


def build_app(settings: AuthSettings, **options: Unpack[KitOptions]) -> AuthApp:
    """Declare every part of auth from ``settings``; nothing connects until started."""
    kit = Service(settings, **options)
    database = kit.postgres(settings, outbox_migration=2, unavailable_error=AuthUnavailable)
    store = AuthStore(database, events_topic=settings.events_topic)
    keys = KeyRing(
        store,
        KeyEncryption(settings.kek, settings.previous_keks),
        algorithm=settings.signing_algorithm,
        token_lifetime=settings.access_token_ttl,
        verifier_leeway=timedelta(seconds=settings.token_leeway_seconds),
        rotation_interval=timedelta(days=settings.signing_key_rotation_days),
        refresh_interval=settings.signing_key_refresh_seconds,
    )
    # Auth verifies its own tokens like every other service, from its own key store (no RPC),
    # and writes the revocation list that every verifier reads.
    revocations = token_revocations(settings)
    verifier = JwksTokenVerifier.from_settings(
        keys.jwks_document, settings, min_refresh_seconds=1.0, revocations=revocations
    )
    service = AuthService(
        store,
        PasswordHashing(settings.argon2, concurrency=settings.password_hash_concurrency),
        keys,
        tokens=TokenSettings(
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            access_token_ttl=settings.access_token_ttl,
            refresh_token_ttl=settings.refresh_token_ttl,
            first_party_client_id=settings.first_party_client_id,
        ),
        throttling=ThrottlePolicies(
            account=settings.throttle_policy(settings.throttle_account_max_failures),
            address=settings.throttle_policy(settings.throttle_address_max_failures),
            account_ceiling=settings.throttle_account_ceiling,
        ),
        metrics=AuthMetrics(kit.registry),
        revocations=revocations,
        verifier=verifier,
    )
    kit.verify_tokens(verifier)
    kit.part(keys)
    kit.part(Bootstrap(service, settings))
    kit.postgres_outbox(database, settings)
    kit.job(key_maintenance(keys))
    kit.job(housekeeping(service, interval=settings.housekeeping_interval_seconds))
    kit.serve(
        auth_pb2_grpc.add_AuthServiceServicer_to_server,
        AuthServicer(service, trust_forwarded_for=settings.trust_forwarded_for),
        SERVICE_NAME,
    )
    return AuthApp(
        kit=kit, database=database, store=store, keys=keys, service=service, verifier=verifier
    )


DEFINITION = Definition("auth", AuthSettings, build_app, COMMANDS)
