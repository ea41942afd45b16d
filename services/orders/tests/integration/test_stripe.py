"""Stripe payments against stripe-mock: PaymentIntents through the official SDK, and the signed
webhook (RecordPaymentEvent) that pays an order, with real auth, catalog, PostgreSQL and Kafka.

stripe-mock validates every request against Stripe's API schema but keeps no state: a
confirmed PaymentIntent always comes back ``requires_payment_method`` (declined), so a
successful payment reaches an order the way Stripe recommends relying on anyway, through the
``payment_intent.succeeded`` event, signed here as Stripe signs it (HMAC-SHA256 of
``<timestamp>.<body>`` with the endpoint's secret).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import grpc
import pytest

from mercato.catalog.v1 import catalog_pb2
from mercato.orders.v1 import orders_pb2
from mercato_devstack import fixtures
from mercato_devstack.stripe_mock import TEST_API_KEY
from mercato_orders.service.payment import PAYMENT_PROVIDER_ACTOR

pytestmark = pytest.mark.integration
stripe_mock = fixtures.stripe_mock  # the session's stripe-mock process

S = orders_pb2
WEBHOOK_SECRET = "whsec_mercato_tests"


def stripe_settings(stripe_mock: Any, **overrides: Any) -> dict[str, Any]:
    return {
        "payment_provider": "stripe",
        "stripe_api_key": TEST_API_KEY,
        "stripe_webhook_secret": WEBHOOK_SECRET,
        "stripe_api_base": stripe_mock.url,
        "stripe_max_network_retries": 0,
        **overrides,
    }


def signed(
    event: dict[str, Any], *, secret: str = WEBHOOK_SECRET, age: float = 0
) -> tuple[bytes, str]:
    payload = json.dumps(event).encode()
    timestamp = int(time.time() - age)
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + payload, hashlib.sha256)
    return payload, f"t={timestamp},v1={mac.hexdigest()}"


def succeeded(
    order: orders_pb2.Order, *, amount: int | None = None, intent: str = ""
) -> dict[str, Any]:
    """A payment_intent.succeeded event for ``order``, shaped as Stripe sends it."""
    return {
        "id": f"evt_{uuid.uuid4().hex[:24]}",
        "object": "event",
        "type": "payment_intent.succeeded",
        "api_version": "2025-01-27.acacia",
        "created": int(time.time()),
        "data": {
            "object": {
                "id": intent or f"pi_{uuid.uuid4().hex[:24]}",
                "object": "payment_intent",
                "amount": order.total.amount_minor if amount is None else amount,
                "amount_received": order.total.amount_minor if amount is None else amount,
                "currency": order.total.currency_code.lower(),
                "status": "succeeded",
                "metadata": {"order_id": order.id},
            }
        },
    }


def counted(orders: Any, outcome: str) -> float:
    """mercato_orders_payment_events_total{outcome} of this orders instance."""
    value = orders.app.kit.registry.get_sample_value(
        "mercato_orders_payment_events_total", {"outcome": outcome}
    )
    return float(value or 0)


async def record(orders: Any, payload: bytes, signature: str) -> str:
    response = await orders.stub.RecordPaymentEvent(
        S.RecordPaymentEventRequest(
            payload={"content_type": "application/json", "data": payload},
            stripe_signature=signature,
        )
    )
    return response.order_id


async def test_pay_order_creates_a_confirmed_payment_intent(
    make_orders, auth, catalog, stripe_mock
):
    orders = await make_orders(**stripe_settings(stripe_mock))
    await catalog.product("STRIPE-1", stock=5, price=2599)
    ann = await auth.customer()
    placed = await orders.create(ann, ("STRIPE-1", 1))

    failure = await orders.fails(orders.pay(ann.md, placed, token="pm_card_visa"))

    # stripe-mock's confirmed PaymentIntent is requires_payment_method: a declined attempt.
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYMENT_DECLINED",
    )
    calls = stripe_mock.requests("POST", "/v1/payment_intents")
    ours = [c for c in calls if placed.id in c]
    assert len(ours) == 1, calls[-3:]
    for part in ("amount:2599", "currency:eur", "confirm:true", "payment_method:pm_card_visa"):
        assert part in ours[0], ours[0]
    # Nothing changed: still payable, the stock still held.
    assert (await orders.get(ann.md, placed.id)).state == S.ORDER_STATE_CONFIRMED
    assert await catalog.stock("STRIPE-1") == (5, 1, 4)


async def test_unreachable_stripe_is_unavailable(make_orders, auth, catalog, stripe_mock):
    closed = "http://127.0.0.1:9"  # discard: nothing listens
    orders = await make_orders(**stripe_settings(stripe_mock, stripe_api_base=closed))
    await catalog.product("STRIPE-2", stock=5, price=500)
    ann = await auth.customer()
    placed = await orders.create(ann, ("STRIPE-2", 1))

    failure = await orders.fails(orders.pay(ann.md, placed, token="pm_card_visa"))

    assert (failure.code, failure.reason) == (grpc.StatusCode.UNAVAILABLE, "PAYMENT_UNAVAILABLE")
    assert TEST_API_KEY not in str(failure)
    assert (await orders.get(ann.md, placed.id)).state == S.ORDER_STATE_CONFIRMED


async def test_signed_event_pays_the_order_once(make_orders, auth, catalog, stripe_mock):
    orders = await make_orders(events=True, **stripe_settings(stripe_mock))
    await catalog.product("STRIPE-3", stock=5, price=1250)
    ann = await auth.customer()
    placed = await orders.create(ann, ("STRIPE-3", 2))
    event = succeeded(placed)

    assert await record(orders, *signed(event)) == placed.id

    paid = await orders.get(ann.md, placed.id)
    assert paid.state == S.ORDER_STATE_PAID
    assert paid.payment_id == event["data"]["object"]["id"]
    assert paid.history[-1].actor == PAYMENT_PROVIDER_ACTOR
    assert await catalog.stock("STRIPE-3") == (3, 0, 3)
    assert (await catalog.reservation(placed.id)).state == catalog_pb2.RESERVATION_STATE_COMMITTED

    # Stripe delivers an event again until acknowledged: the same one again changes nothing.
    assert await record(orders, *signed(event)) == placed.id
    again = await orders.get(ann.md, placed.id)
    assert len(again.history) == len(paid.history)
    assert (counted(orders, "paid"), counted(orders, "repeated")) == (1, 1)
    records = await orders.consume(lambda rs: "OrderPaid" in orders.event_types(rs, placed.id))
    assert orders.event_types(records, placed.id) == ["OrderPlaced", "OrderPaid"]
    assert not [
        c for c in stripe_mock.requests("POST", "/v1/refunds") if event["data"]["object"]["id"] in c
    ]


async def test_unsigned_or_altered_events_change_nothing(make_orders, auth, catalog, stripe_mock):
    orders = await make_orders(**stripe_settings(stripe_mock))
    await catalog.product("STRIPE-4", stock=5, price=700)
    ann = await auth.customer()
    placed = await orders.create(ann, ("STRIPE-4", 1))
    payload, signature = signed(succeeded(placed))
    altered = payload.replace(b'"amount": 700', b'"amount": 1')
    assert altered != payload

    cases = {
        "wrong secret": signed(succeeded(placed), secret="whsec_someone_else"),
        "altered body": (altered, signature),
        "too old": signed(succeeded(placed), age=3600),
        "no signature": (payload, "t=1"),
    }
    for name, (body, header) in cases.items():
        failure = await orders.fails(record(orders, body, header))
        assert (failure.code, failure.reason) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "PAYMENT_EVENT_INVALID",
        ), name
        assert failure.fields == ["stripe_signature"], name
    not_json, header = signed({"id": "evt_1"})
    failure = await orders.fails(record(orders, not_json, header))
    assert (failure.reason, failure.fields) == ("PAYMENT_EVENT_INVALID", ["payload"])

    assert counted(orders, "invalid") == len(cases) + 1
    assert counted(orders, "paid") == 0
    order = await orders.get(ann.md, placed.id)
    assert (order.state, order.payment_id) == (S.ORDER_STATE_CONFIRMED, "")
    assert await catalog.stock("STRIPE-4") == (5, 1, 4)


async def test_payments_that_cannot_pay_their_order_are_refunded(
    make_orders, auth, catalog, stripe_mock
):
    orders = await make_orders(**stripe_settings(stripe_mock))
    await catalog.product("STRIPE-5", stock=5, price=900)
    ann = await auth.customer()

    # Another amount than the order's total: refunded, the order stays payable.
    short = await orders.create(ann, ("STRIPE-5", 1))
    wrong_amount = succeeded(short, amount=1)
    assert await record(orders, *signed(wrong_amount)) == short.id
    assert (await orders.get(ann.md, short.id)).state == S.ORDER_STATE_CONFIRMED

    # A payment arriving after the order was cancelled: refunded, the order stays cancelled.
    cancelled = await orders.create(ann, ("STRIPE-5", 1))
    await orders.cancel(ann.md, cancelled.id, "changed my mind")
    late = succeeded(cancelled)
    assert await record(orders, *signed(late)) == cancelled.id
    assert (await orders.get(ann.md, cancelled.id)).state == S.ORDER_STATE_CANCELLED

    refunds = stripe_mock.requests("POST", "/v1/refunds")
    for event in (wrong_amount, late):
        intent = event["data"]["object"]["id"]
        assert [r for r in refunds if f"payment_intent:{intent}" in r], (intent, refunds[-3:])
    assert counted(orders, "refunded") == 2
    # Nothing was sold: only the payable order still holds a unit.
    assert await catalog.stock("STRIPE-5") == (5, 1, 4)


async def test_other_events_are_acknowledged_and_the_dev_provider_has_none(
    make_orders, auth, catalog, stripe_mock
):
    orders = await make_orders(**stripe_settings(stripe_mock))
    failed = {
        "id": "evt_x",
        "object": "event",
        "type": "payment_intent.payment_failed",
        "data": {"object": {"id": "pi_x", "object": "payment_intent"}},
    }
    assert await record(orders, *signed(failed)) == ""
    other = {"id": "evt_y", "object": "event", "type": "customer.created", "data": {"object": {}}}
    assert await record(orders, *signed(other)) == ""
    # An order id that is no order of this service (another integration's metadata): ignored.
    foreign = succeeded(
        orders_pb2.Order(id="not-a-uuid", total={"currency_code": "EUR", "amount_minor": 1})
    )
    assert await record(orders, *signed(foreign)) == ""
    unknown = succeeded(
        orders_pb2.Order(id=str(uuid.uuid4()), total={"currency_code": "EUR", "amount_minor": 1})
    )
    assert await record(orders, *signed(unknown)) == ""
    assert counted(orders, "ignored") == 4

    dev = await make_orders()
    failure = await dev.fails(record(dev, *signed(other)))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYMENT_EVENTS_UNSUPPORTED",
    )
