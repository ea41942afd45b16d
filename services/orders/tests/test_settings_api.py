"""Settings, the STOCK_UNAVAILABLE status, conversions and events."""

from __future__ import annotations

from datetime import UTC, datetime

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from mercato.orders.events.v1 import events_pb2
from mercato.orders.v1 import orders_pb2
from mercato_common.kafka import unpack_data
from mercato_common.rpc_errors import to_grpc_status
from mercato_common.settings import SettingsError, load_settings
from mercato_orders import publish
from mercato_orders.convert import order_to_proto, state_from_proto, state_to_proto
from mercato_orders.domain.errors import Shortage, ShortageKind, StockUnavailable
from mercato_orders.domain.model import Money, OrderLine, OrderState
from mercato_orders.domain.rules import cancel, new_order, pay
from mercato_orders.settings import OrdersSettings

BASE = {
    "MERCATO_ORDERS_DATABASE_URL": "postgresql://orders:pa55word@db/orders",
    "MERCATO_ORDERS_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
    "MERCATO_ORDERS_SERVICE_CLIENT_SECRET": "s3cret-s3cret-s3cret",
    "MERCATO_ORDERS_PAYMENT_PROVIDER": "dev",
}
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
ORDER_ID = "5d4f5b5e-7a0b-4a35-9a43-1f1a2b3c4d5e"


def test_settings_defaults_and_secrets() -> None:
    settings = load_settings(OrdersSettings, BASE)
    assert (settings.grpc_port, settings.metrics_port) == (50063, 9463)
    assert settings.events_topic == "mercato.orders.events.v1"
    assert settings.idempotency_key_ttl_seconds >= 86_400
    assert "pa55word" not in repr(settings)
    assert "s3cret" not in repr(settings)


def test_settings_refuse_short_key_retention_and_lease() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings(
            OrdersSettings,
            {
                **BASE,
                "MERCATO_ORDERS_IDEMPOTENCY_KEY_TTL_SECONDS": "3600",
            },
        )
    assert "MERCATO_ORDERS_IDEMPOTENCY_KEY_TTL_SECONDS" in str(caught.value)
    with pytest.raises(SettingsError, match="LEASE"):
        load_settings(OrdersSettings, {**BASE, "MERCATO_ORDERS_IDEMPOTENCY_LEASE_SECONDS": "5"})
    with pytest.raises(SettingsError) as missing:
        load_settings(OrdersSettings, {})
    assert "MERCATO_ORDERS_SERVICE_CLIENT_SECRET: is required" in str(missing.value)
    # The payment provider is a choice each deployment makes: no default.
    assert "MERCATO_ORDERS_PAYMENT_PROVIDER: is required" in str(missing.value)
    unknown = {**BASE, "MERCATO_ORDERS_PAYMENT_PROVIDER": "free"}
    with pytest.raises(SettingsError, match="MERCATO_ORDERS_PAYMENT_PROVIDER"):
        load_settings(OrdersSettings, unknown)
    # Stripe needs its API key and the webhook's signing secret, never shown.
    stripe = {**BASE, "MERCATO_ORDERS_PAYMENT_PROVIDER": "stripe"}
    with pytest.raises(SettingsError, match="STRIPE_API_KEY and STRIPE_WEBHOOK_SECRET"):
        load_settings(OrdersSettings, stripe)
    stripe["MERCATO_ORDERS_STRIPE_API_KEY"] = "sk_test_secret_value"
    stripe["MERCATO_ORDERS_STRIPE_WEBHOOK_SECRET"] = "whsec_secret_value"
    settings = load_settings(OrdersSettings, stripe)
    assert settings.payment_provider == "stripe"
    assert "secret_value" not in repr(settings)


def test_stock_unavailable_status_names_the_lines() -> None:
    error = StockUnavailable(
        [
            Shortage("A-1", ShortageKind.OUT_OF_STOCK, "1 available"),
            Shortage("B-2", ShortageKind.ARCHIVED, "archived"),
        ]
    )
    status = to_grpc_status(error)
    assert status.code == grpc.StatusCode.FAILED_PRECONDITION
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    decoded = status_pb2.Status.FromString(value)
    kinds = {}
    for detail in decoded.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            kinds["info"] = (info.reason, info.domain)
        if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = error_details_pb2.PreconditionFailure()
            detail.Unpack(failure)
            kinds["failure"] = [(v.type, v.subject) for v in failure.violations]
    assert kinds == {
        "info": ("STOCK_UNAVAILABLE", "orders.mercato"),
        "failure": [("OUT_OF_STOCK", "A-1"), ("ARCHIVED", "B-2")],
    }


def _order():
    return new_order(
        order_id=ORDER_ID,
        user_id="u-1",
        idempotency_key="k",
        lines=[OrderLine("MUG-1", 2, "Mug", Money("EUR", 1250))],
        total=Money("EUR", 2500),
        accepted_at=T0,
        confirmed_at=T0,
    )


def test_order_to_proto() -> None:
    message = order_to_proto(_order())
    assert message.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert message.lines[0].line_total.amount_minor == 2500
    assert message.total.currency_code == "EUR"
    assert [h.to_state for h in message.history] == [
        orders_pb2.ORDER_STATE_PENDING,
        orders_pb2.ORDER_STATE_CONFIRMED,
    ]
    assert message.history[0].from_state == orders_pb2.ORDER_STATE_UNSPECIFIED
    for state in OrderState:
        assert state_from_proto(state_to_proto(state)) is state
    assert state_from_proto(orders_pb2.ORDER_STATE_UNSPECIFIED) is None


def test_events_carry_order_user_and_place_time() -> None:
    order = _order()
    placed = publish.order_placed(order)
    assert (placed.subject, placed.source) == (ORDER_ID, "orders")
    assert placed.type == "mercato.orders.events.v1.OrderPlaced"
    data = unpack_data(placed, events_pb2.OrderPlaced)
    assert (data.order_id, data.user_id, data.total.amount_minor) == (ORDER_ID, "u-1", 2500)
    paid_order = pay(order, payment_id="pay_1", actor="u-1", now=T0)
    paid = unpack_data(publish.order_paid(paid_order), events_pb2.OrderPaid)
    assert (paid.payment_id, paid.amount.amount_minor, len(paid.lines)) == ("pay_1", 2500, 1)
    cancelled_order = cancel(paid_order, actor="u-1", reason="late", now=T0)
    assert cancelled_order is not None
    cancelled = unpack_data(
        publish.order_cancelled(cancelled_order, OrderState.PAID), events_pb2.OrderCancelled
    )
    assert cancelled.previous_state == orders_pb2.ORDER_STATE_PAID
    assert (cancelled.reason, cancelled.actor_id) == ("late", "u-1")
    assert cancelled.place_time.ToDatetime(tzinfo=UTC) == T0
