"""Wiring: the one place that builds the auth service's objects from its settings.

``build_app`` returns the lifecycle parts in start order: database (pool + migrations), signing
keys, bootstrap (admin and service clients), outbox relay, housekeeping, gRPC server.
``mercato_common.runtime.run_until_signal`` starts them in that order and stops them in reverse,
so the server drains before the relay and the pool go away.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import timedelta

from prometheus_client import REGISTRY, CollectorRegistry

from mercato.auth.v1 import auth_pb2_grpc
from mercato_auth.api import SERVICE_NAME, AuthServicer
from mercato_auth.crypto import KeyEncryption, PasswordHashing
from mercato_auth.domain.errors import AuthError, AuthUnavailable
from mercato_auth.service import AuthMetrics, AuthService, ThrottlePolicies, TokenSettings
from mercato_auth.settings import AuthSettings
from mercato_auth.signing import KeyRing
from mercato_auth.store import TRACER_NAME, AuthStore, Database, migrations_dir
from mercato_common.identity import JwksTokenVerifier
from mercato_common.kafka import EventProducer, KafkaConnection
from mercato_common.outbox import PostgresOutboxRelay, RelayRunner
from mercato_common.runtime import Lifecycle, Periodic
from mercato_common.saturation import SaturationMetrics
from mercato_common.server import GrpcServer

__all__ = ["AuthApp", "AuthCore", "Bootstrap", "Housekeeping", "build_app", "build_core"]

_log = logging.getLogger("mercato_auth")


@dataclass
class AuthCore:
    """What the server and the admin commands share."""

    settings: AuthSettings
    database: Database
    store: AuthStore
    keys: KeyRing
    service: AuthService


def build_core(
    settings: AuthSettings,
    *,
    registry: CollectorRegistry = REGISTRY,
    migrate_on_start: bool | None = None,
) -> AuthCore:
    database = Database(
        settings.database_url.get_secret_value(),
        tracer_name=TRACER_NAME,
        migrations=migrations_dir(),
        min_size=settings.database_pool_min_size,
        max_size=settings.database_pool_max_size,
        command_timeout=settings.database_command_timeout_seconds,
        acquire_timeout=settings.database_command_timeout_seconds,
        unavailable_error=AuthUnavailable,
        migrate_on_start=(
            settings.migrate_on_start if migrate_on_start is None else migrate_on_start
        ),
    )
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
        ),
        metrics=AuthMetrics(registry),
    )
    return AuthCore(settings=settings, database=database, store=store, keys=keys, service=service)


class Bootstrap:
    """Ensures the bootstrap admin and the configured service clients at start."""

    def __init__(self, service: AuthService, settings: AuthSettings) -> None:
        self._service = service
        self._settings = settings

    async def start(self) -> None:
        settings = self._settings
        if settings.bootstrap_admin_email and settings.bootstrap_admin_password:
            try:
                user, created = await self._service.ensure_admin(
                    settings.bootstrap_admin_email,
                    settings.bootstrap_admin_password.get_secret_value(),
                )
            except AuthError as error:  # a bad password policy or email: say which, not what
                raise RuntimeError(f"bootstrap admin refused: {error.message}") from None
            _log.info(
                "bootstrap admin ensured", extra={"user_id": user.id, "admin_created": created}
            )
        for client in settings.service_clients:
            await self._service.ensure_client(
                client.client_id, client.secret.get_secret_value(), client.scopes
            )

    async def stop(self) -> None:
        return None


class Housekeeping(Periodic):
    """Deletes expired refresh tokens, stale throttle rows and long-retired keys, periodically."""

    def __init__(self, service: AuthService, interval: float) -> None:
        # First run one interval after start; a run in progress is cancelled at stop.
        super().__init__(
            "auth-housekeeping",
            service.housekeeping,
            interval=interval,
            immediate=False,
            logger=_log,
        )


@dataclass
class AuthApp:
    core: AuthCore
    server: GrpcServer
    verifier: JwksTokenVerifier
    relay: RelayRunner[PostgresOutboxRelay] | None
    parts: list[Lifecycle] = field(default_factory=list)

    @property
    def service(self) -> AuthService:
        return self.core.service


def build_app(settings: AuthSettings, *, registry: CollectorRegistry = REGISTRY) -> AuthApp:
    core = build_core(settings, registry=registry)
    # Auth verifies its own tokens like every other service, from its own key store (no RPC).
    verifier = JwksTokenVerifier.from_settings(
        core.keys.jwks_document, settings, min_refresh_seconds=1.0
    )
    server = GrpcServer(
        settings, error_domain="auth.mercato", token_verifier=verifier, registry=registry
    )
    server.add_service(
        auth_pb2_grpc.add_AuthServiceServicer_to_server,
        AuthServicer(core.service, trust_forwarded_for=settings.trust_forwarded_for),
        SERVICE_NAME,
    )
    saturation = SaturationMetrics(registry)
    saturation.watch_postgres("postgres", lambda: core.database.pool)
    relay: RelayRunner[PostgresOutboxRelay] | None = None
    if settings.outbox_relay_enabled:
        producer = EventProducer(
            KafkaConnection(
                bootstrap_servers=settings.kafka_bootstrap_servers,
                client_id=settings.kafka_client_id,
            )
        )

        def make_relays() -> list[PostgresOutboxRelay]:
            # Made at start: the relay reads the pool, which exists once the database started.
            return [
                PostgresOutboxRelay(
                    core.database.pool,
                    producer,
                    poll_interval=settings.outbox_poll_interval_seconds,
                    registry=registry,
                )
            ]

        relay = RelayRunner(producer, make_relays)
        saturation.watch_producer(producer)
    parts: list[Lifecycle] = [core.database, core.keys, Bootstrap(core.service, settings)]
    if relay is not None:
        parts.append(relay)
    parts.append(Housekeeping(core.service, settings.housekeeping_interval_seconds))
    parts.append(saturation)
    parts.append(server)
    return AuthApp(core=core, server=server, verifier=verifier, relay=relay, parts=parts)
