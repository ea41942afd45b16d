"""Wiring: the one place that builds the orders service's objects from its settings.

``build_app`` returns the lifecycle parts in start order: database (pool + migrations), the
channels to auth and catalog, the service (drains background compensations on stop), the outbox
relay, the reconciler, the gRPC server. ``mercato_common.runtime.run_until_signal`` starts them
in that order and stops them in reverse, so the server drains before what it uses goes away.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta

import grpc
from prometheus_client import REGISTRY, CollectorRegistry

from mercato.auth.v1 import auth_pb2_grpc
from mercato.catalog.v1 import catalog_pb2_grpc
from mercato.orders.v1 import orders_pb2_grpc
from mercato_common.client import create_channel
from mercato_common.identity import JwksTokenVerifier, TokenVerifier, auth_jwks_fetcher
from mercato_common.kafka import EventProducer, KafkaConnection
from mercato_common.outbox import PostgresOutboxRelay, RelayRunner
from mercato_common.runtime import CloseOnStop, Lifecycle
from mercato_common.saturation import SaturationMetrics
from mercato_common.server import GrpcServer
from mercato_orders.api import SERVICE_NAME, OrdersServicer
from mercato_orders.clients import CatalogClient, ServiceTokens, issue_with
from mercato_orders.domain.errors import OrdersUnavailable
from mercato_orders.domain.payments import PaymentProvider
from mercato_orders.payments import DevPaymentProvider
from mercato_orders.reconciler import Reconciler
from mercato_orders.service import OrdersConfig, OrdersMetrics, OrdersService
from mercato_orders.settings import OrdersSettings
from mercato_orders.store import TRACER_NAME, Database, OrdersStore, migrations_dir

__all__ = ["OrdersApp", "build_app"]

AUTH_SERVICE = "mercato.auth.v1.AuthService"
CATALOG_SERVICE = "mercato.catalog.v1.CatalogService"


@dataclass
class OrdersApp:
    settings: OrdersSettings
    database: Database
    store: OrdersStore
    service: OrdersService
    catalog: CatalogClient
    tokens: ServiceTokens
    payments: PaymentProvider
    server: GrpcServer
    relay: RelayRunner[PostgresOutboxRelay] | None
    # Built whatever the settings say (the `reconcile` command runs it once); a part of the
    # running service only with RECONCILE_ENABLED.
    reconciler: Reconciler
    # Closes the channels to auth and catalog on stop.
    channels: CloseOnStop
    parts: list[Lifecycle] = field(default_factory=list)


def build_app(
    settings: OrdersSettings,
    *,
    registry: CollectorRegistry = REGISTRY,
    token_verifier: TokenVerifier | None = None,
    payments: PaymentProvider | None = None,
) -> OrdersApp:
    """Build every part from ``settings``; nothing connects until started."""
    database = Database(
        settings.database_url.get_secret_value(),
        tracer_name=TRACER_NAME,
        migrations=migrations_dir(),
        min_size=settings.database_pool_min_size,
        max_size=settings.database_pool_max_size,
        command_timeout=settings.database_command_timeout_seconds,
        migrate_on_start=settings.migrate_on_start,
        acquire_timeout=settings.database_command_timeout_seconds,
        unavailable_error=OrdersUnavailable,
    )
    store = OrdersStore(database, events_topic=settings.events_topic)
    saturation = SaturationMetrics(registry)
    saturation.watch_postgres("postgres", lambda: database.pool)

    auth_channel = create_channel(
        settings.auth_target,
        services=[AUTH_SERVICE],
        default_timeout=settings.auth_timeout_seconds,
        tls=settings.client_tls,
        max_message_bytes=settings.max_message_bytes,
    )
    auth = auth_pb2_grpc.AuthServiceStub(auth_channel)
    tokens = ServiceTokens(
        issue_with(
            auth,
            client_id=settings.service_client_id,
            client_secret=settings.service_client_secret.get_secret_value(),
            scope=settings.service_token_scope,
            timeout=settings.auth_timeout_seconds,
        ),
        refresh_margin=settings.service_token_refresh_margin_seconds,
    )
    if token_verifier is None:
        token_verifier = JwksTokenVerifier.from_settings(auth_jwks_fetcher(auth_channel), settings)
    catalog_channel = create_channel(
        settings.catalog_target,
        services=[CATALOG_SERVICE],
        default_timeout=settings.catalog_timeout_seconds,
        tls=settings.client_tls,
        metadata=tokens.metadata,
        max_message_bytes=settings.max_message_bytes,
    )
    catalog = CatalogClient(
        catalog_pb2_grpc.CatalogServiceStub(catalog_channel),
        tokens,
        timeout=settings.catalog_timeout_seconds,
    )
    payments = payments if payments is not None else DevPaymentProvider()
    service = OrdersService(
        store,
        catalog,
        payments,
        config=OrdersConfig(
            key_ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds),
            lease=timedelta(seconds=settings.idempotency_lease_seconds),
            wait_seconds=settings.idempotency_wait_seconds,
            compensation_timeout=settings.compensation_timeout_seconds,
        ),
        metrics=OrdersMetrics(registry),
    )
    server = GrpcServer(
        settings, error_domain="orders.mercato", token_verifier=token_verifier, registry=registry
    )
    server.add_service(
        orders_pb2_grpc.add_OrdersServiceServicer_to_server, OrdersServicer(service), SERVICE_NAME
    )

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
                    database.pool,
                    producer,
                    poll_interval=settings.outbox_poll_interval_seconds,
                    registry=registry,
                )
            ]

        relay = RelayRunner(producer, make_relays)
        saturation.watch_producer(producer)
    reconciler = Reconciler(
        service,
        interval=settings.reconcile_interval_seconds,
        batch_size=settings.reconcile_batch_size,
        orphan_grace=timedelta(seconds=settings.reconcile_orphan_grace_seconds),
        catalog_scan_every=settings.reconcile_catalog_scan_every,
        reservation_check_after=timedelta(seconds=settings.reservation_check_after_seconds),
    )
    channels = CloseOnStop(lambda: _close_all(auth_channel, catalog_channel))

    parts: list[Lifecycle] = [database, channels, service]
    if relay is not None:
        parts.append(relay)
    if settings.reconcile_enabled:
        parts.append(reconciler)
    parts.append(saturation)
    parts.append(server)
    return OrdersApp(
        settings=settings,
        database=database,
        store=store,
        service=service,
        catalog=catalog,
        tokens=tokens,
        payments=payments,
        server=server,
        relay=relay,
        reconciler=reconciler,
        channels=channels,
        parts=parts,
    )


async def _close_all(*channels: grpc.aio.Channel) -> None:
    for channel in channels:
        await channel.close()
