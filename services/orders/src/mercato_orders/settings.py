"""The orders service's settings, from ``MERCATO_ORDERS_*`` environment variables.

Read once in ``__main__`` with ``load_settings(OrdersSettings, os.environ)``. Secrets (the
database URL, the service client's secret) are ``SecretStr``: never in ``repr``, logs or errors.
"""

from __future__ import annotations

from typing import ClassVar, Literal, Self

from pydantic import Field, SecretStr, model_validator

from mercato_common.settings import BaseServiceSettings, OutboxSettings, PostgresSettings

__all__ = ["OrdersSettings"]

DAY = 86_400


class OrdersSettings(BaseServiceSettings, PostgresSettings, OutboxSettings):
    env_prefix: ClassVar[str] = "MERCATO_ORDERS_"

    service_name: str = Field(default="orders", min_length=1)
    grpc_port: int = Field(default=50063, ge=0, le=65535)
    metrics_port: int = Field(default=9463, ge=0, le=65535)
    events_topic: str = Field(default="mercato.orders.events.v1", min_length=1)

    # Auth: JWKS for verifying callers, and the client-credentials token for the catalog.
    auth_target: str = "127.0.0.1:50061"
    # The service client registered in auth (auth's SERVICE_CLIENTS or `create-client`).
    service_client_id: str = Field(default="orders", min_length=1, max_length=128)
    service_client_secret: SecretStr
    service_token_scope: str = Field(default="catalog:reserve", min_length=1)
    # A cached token is renewed this long before it expires.
    service_token_refresh_margin_seconds: float = Field(default=60.0, ge=0)
    auth_timeout_seconds: float = Field(default=5.0, gt=0)

    # Catalog (prices and stock reservations).
    catalog_target: str = "127.0.0.1:50062"
    # Deadline of each catalog call (never more than what is left of the caller's deadline).
    catalog_timeout_seconds: float = Field(default=5.0, gt=0)
    # Deadline of a compensation (ReleaseStock after a failed create), run outside the caller's
    # deadline.
    compensation_timeout_seconds: float = Field(default=5.0, gt=0)

    # Idempotency keys: kept at least this long after the order was placed (>= 24 h).
    idempotency_key_ttl_seconds: float = Field(default=float(DAY), ge=DAY)
    # How long one create owns its key; past it, a retry or the reconciler takes the key over
    # (releasing or reusing the reservation). Must exceed the longest possible create.
    idempotency_lease_seconds: float = Field(default=30.0, gt=0)
    # How long a duplicate request waits for the first one before ABORTED IDEMPOTENCY_KEY_IN_USE.
    idempotency_wait_seconds: float = Field(default=10.0, ge=0)

    # Caps per user against hoarding stock with unpaid orders (0: no cap). Checked when a
    # create starts: unpaid (CONFIRMED) orders plus other creates in progress → 429
    # TOO_MANY_OPEN_ORDERS; units of one product in unpaid orders plus this one → 409
    # PRODUCT_LIMIT_EXCEEDED.
    max_open_orders_per_user: int = Field(default=20, ge=0)
    max_units_per_product_per_user: int = Field(default=100, ge=0)

    # Reconciliation: abandoned creates, owed releases/refunds, orphan reservations in the
    # catalog, CONFIRMED orders whose reservation lapsed.
    reconcile_enabled: bool = True
    reconcile_interval_seconds: float = Field(default=5.0, gt=0)
    reconcile_batch_size: int = Field(default=100, ge=1, le=1000)
    # Catalog reservations HELD longer than this with no committed order are released.
    reconcile_orphan_grace_seconds: float = Field(default=120.0, ge=0)
    # The catalog scan runs every this many reconciliation rounds.
    reconcile_catalog_scan_every: int = Field(default=12, ge=1)
    # CONFIRMED orders older than this get their reservation checked (expired → FAILED). Match
    # the catalog's RESERVATION_TTL_SECONDS.
    reservation_check_after_seconds: float = Field(default=900.0, ge=0)

    # Payments: required, no default. "stripe": Stripe PaymentIntents (the settings below).
    # "dev": approves the test token tok_test_ok and moves no money (development and tests). A
    # deployment names it knowingly (the chart's payments.provider); the local suites set it
    # (services.toml).
    payment_provider: Literal["dev", "stripe"]
    # Stripe: the secret (or restricted) API key and the webhook endpoint's signing secret.
    stripe_api_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    # Stripe's API address; empty for Stripe's own (tests point it at stripe-mock).
    stripe_api_base: str = ""
    stripe_timeout_seconds: float = Field(default=10.0, gt=0)
    # Network errors, 409, 429 and 5xx are retried this often, with the same idempotency key.
    stripe_max_network_retries: int = Field(default=2, ge=0, le=10)
    # A webhook signed longer ago than this is refused (replay protection).
    stripe_webhook_tolerance_seconds: int = Field(default=300, ge=1, le=86_400)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        # While it owns its key a create makes at most one token request, two catalog calls and
        # the database commit; the lease must outlast that, or a retry could take over a create
        # that is still running.
        longest_create = (
            self.auth_timeout_seconds
            + 2 * self.catalog_timeout_seconds
            + self.database_command_timeout_seconds
        )
        if self.idempotency_lease_seconds <= longest_create:
            raise ValueError(
                "IDEMPOTENCY_LEASE_SECONDS must exceed AUTH_TIMEOUT_SECONDS + 2 x "
                "CATALOG_TIMEOUT_SECONDS + DATABASE_COMMAND_TIMEOUT_SECONDS"
            )
        if self.reconcile_orphan_grace_seconds < self.idempotency_lease_seconds:
            raise ValueError("RECONCILE_ORPHAN_GRACE_SECONDS must be >= IDEMPOTENCY_LEASE_SECONDS")
        if self.payment_provider == "stripe" and not (
            self.stripe_api_key and self.stripe_webhook_secret
        ):
            raise ValueError(
                "PAYMENT_PROVIDER=stripe needs STRIPE_API_KEY and STRIPE_WEBHOOK_SECRET"
            )
        return self
