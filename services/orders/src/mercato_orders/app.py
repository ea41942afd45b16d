"""The orders service, declared for the kit (``mercato_common.kit``).

Its parts, in start order: the PostgreSQL store (migrations; the outbox table is migration 2),
the channels to auth and catalog, the service (it drains background compensations on stop), the
outbox relay, the reconciler, then what the kit adds to every service (saturation metrics, the
gRPC server, the health watch).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Unpack

from mercato.auth.v1 import auth_pb2_grpc
from mercato.catalog.v1 import catalog_pb2_grpc
from mercato.orders.v1 import orders_pb2_grpc
from mercato_common.kit import App, Definition, KitOptions, Service
from mercato_common.runtime import CloseOnStop
from mercato_orders.api import SERVICE_NAME, OrdersServicer
from mercato_orders.clients import CatalogClient, ServiceTokens, issue_with
from mercato_orders.commands import COMMANDS
from mercato_orders.domain.errors import OrdersUnavailable
from mercato_orders.domain.payments import PaymentProvider
from mercato_orders.domain.rules import UserLimits
from mercato_orders.jobs import Reconciler
from mercato_orders.payments import DevPaymentProvider
from mercato_orders.service import OrdersConfig, OrdersMetrics, OrdersService, Reconciliation
from mercato_orders.settings import OrdersSettings
from mercato_orders.store import Database, OrdersStore

__all__ = ["DEFINITION", "OrdersApp", "build_app"]

AUTH_SERVICE = "mercato.auth.v1.AuthService"
CATALOG_SERVICE = "mercato.catalog.v1.CatalogService"


@dataclass
class OrdersApp(App):
    """The declared service and the objects its commands and tests reach."""

    database: Database
    store: OrdersStore
    service: OrdersService
    catalog: CatalogClient
    tokens: ServiceTokens
    payments: PaymentProvider
    # Built whatever the settings say (the `reconcile` command runs it once); a job of the
    # running service only with RECONCILE_ENABLED.
    reconciler: Reconciler


def build_app(
    settings: OrdersSettings,
    *,
    payments: PaymentProvider | None = None,
    **options: Unpack[KitOptions],
) -> OrdersApp:
    """Declare every part of orders from ``settings``; nothing connects until started."""
    kit = Service(settings, **options)
    database = kit.postgres(settings, outbox_migration=2, unavailable_error=OrdersUnavailable)
    store = OrdersStore(database, events_topic=settings.events_topic)
    auth_channel = kit.client(
        settings.auth_target, services=[AUTH_SERVICE], timeout=settings.auth_timeout_seconds
    )
    tokens = ServiceTokens(
        issue_with(
            auth_pb2_grpc.AuthServiceStub(auth_channel),
            client_id=settings.service_client_id,
            client_secret=settings.service_client_secret.get_secret_value(),
            scope=settings.service_token_scope,
            timeout=settings.auth_timeout_seconds,
        ),
        refresh_margin=settings.service_token_refresh_margin_seconds,
    )
    kit.verify_tokens_with_auth(auth_channel)
    catalog_channel = kit.client(
        settings.catalog_target,
        services=[CATALOG_SERVICE],
        timeout=settings.catalog_timeout_seconds,
        metadata=tokens.metadata,
    )
    catalog = CatalogClient(
        catalog_pb2_grpc.CatalogServiceStub(catalog_channel),
        tokens,
        timeout=settings.catalog_timeout_seconds,
    )
    payments = payments if payments is not None else payment_provider(settings)
    kit.part(CloseOnStop(payments.close))
    service = OrdersService(
        store,
        catalog,
        payments,
        config=OrdersConfig(
            key_ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds),
            lease=timedelta(seconds=settings.idempotency_lease_seconds),
            wait_seconds=settings.idempotency_wait_seconds,
            compensation_timeout=settings.compensation_timeout_seconds,
            limits=UserLimits(
                max_open_orders=settings.max_open_orders_per_user,
                max_units_per_product=settings.max_units_per_product_per_user,
            ),
        ),
        metrics=OrdersMetrics(kit.registry),
    )
    # A part: it drains the compensations still running in the background at stop.
    kit.part(service)
    kit.postgres_outbox(database, settings)
    reconciliation = Reconciliation(
        service,
        retry_after=timedelta(seconds=settings.reconcile_interval_seconds),
        batch_size=settings.reconcile_batch_size,
        orphan_grace=timedelta(seconds=settings.reconcile_orphan_grace_seconds),
        catalog_scan_every=settings.reconcile_catalog_scan_every,
        reservation_check_after=timedelta(seconds=settings.reservation_check_after_seconds),
    )
    reconciler = Reconciler(reconciliation, interval=settings.reconcile_interval_seconds)
    if settings.reconcile_enabled:
        kit.job(reconciler)
    kit.serve(
        orders_pb2_grpc.add_OrdersServiceServicer_to_server, OrdersServicer(service), SERVICE_NAME
    )
    return OrdersApp(
        kit=kit,
        database=database,
        store=store,
        service=service,
        catalog=catalog,
        tokens=tokens,
        payments=payments,
        reconciler=reconciler,
    )


DEFINITION = Definition("orders", OrdersSettings, build_app, COMMANDS)


def payment_provider(settings: OrdersSettings) -> PaymentProvider:
    """The provider PAYMENT_PROVIDER names (the settings check that Stripe's secrets are set)."""
    if settings.payment_provider == "stripe":
        # Imported here: the SDK's memory is spent only by the processes that use it.
        from mercato_orders.payments.stripe_intents import StripePaymentProvider

        api_key, webhook_secret = settings.stripe_api_key, settings.stripe_webhook_secret
        if api_key is None or webhook_secret is None:  # refused by the settings already
            raise ValueError(
                "PAYMENT_PROVIDER=stripe needs STRIPE_API_KEY and STRIPE_WEBHOOK_SECRET"
            )
        return StripePaymentProvider.create(
            api_key=api_key.get_secret_value(),
            webhook_secret=webhook_secret.get_secret_value(),
            api_base=settings.stripe_api_base or None,
            timeout_seconds=settings.stripe_timeout_seconds,
            max_network_retries=settings.stripe_max_network_retries,
            tolerance_seconds=settings.stripe_webhook_tolerance_seconds,
        )
    return DevPaymentProvider()
