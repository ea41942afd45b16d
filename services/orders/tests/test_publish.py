"""The order events: every one carries the order id, the user id and the placement time, and its
envelope is the order's (subject) at the time of the order's last change."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercato.orders.events.v1 import events_pb2
from mercato.orders.v1.orders_pb2 import ORDER_STATE_CONFIRMED
from mercato_common.kafka import Envelope, unpack_data
from mercato_orders import publish
from mercato_orders.domain.model import Money, Order, OrderLine, OrderState
from mercato_orders.domain.rules import cancel, fail, fulfil, new_order, pay

PLACED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
PAID = PLACED + timedelta(minutes=1)
LATER = PLACED + timedelta(minutes=2)
ORDER_ID = "5d4f5b5e-7a0b-4a35-9a43-1f1a2b3c4d5e"


def _placed() -> Order:
    return new_order(
        order_id=ORDER_ID,
        user_id="u-1",
        idempotency_key="k",
        lines=[OrderLine("MUG-1", 2, "Mug", Money("EUR", 1250))],
        total=Money("EUR", 2500),
        accepted_at=PLACED,
        confirmed_at=PLACED,
    )


def _paid() -> Order:
    return pay(_placed(), payment_id="pay_1", actor="u-1", now=PAID)


def _events() -> list[tuple[Envelope, type, datetime]]:
    cancelled = cancel(_paid(), actor="u-1", reason="late", now=LATER)
    fulfilled = fulfil(_paid(), actor="admin", shipment_reference="ship-1", now=LATER)
    assert cancelled is not None
    assert fulfilled is not None
    return [
        (publish.order_placed(_placed()), events_pb2.OrderPlaced, PLACED),
        (publish.order_paid(_paid()), events_pb2.OrderPaid, PAID),
        (
            publish.order_cancelled(cancelled, OrderState.PAID),
            events_pb2.OrderCancelled,
            LATER,
        ),
        (publish.order_fulfilled(fulfilled), events_pb2.OrderFulfilled, LATER),
        (
            publish.order_failed(fail(_placed(), reason="lapsed", now=LATER), OrderState.CONFIRMED),
            events_pb2.OrderFailed,
            LATER,
        ),
    ]


@pytest.mark.parametrize(("envelope", "message", "when"), _events())
def test_every_event_carries_the_order_and_its_last_change_time(
    envelope: Envelope, message: type, when: datetime
) -> None:
    assert (envelope.subject, envelope.source) == (ORDER_ID, publish.SOURCE)
    assert envelope.time.ToDatetime(tzinfo=UTC) == when
    data = unpack_data(envelope, message)
    assert (data.order_id, data.user_id) == (ORDER_ID, "u-1")
    assert data.place_time.ToDatetime(tzinfo=UTC) == PLACED


def test_event_specific_fields() -> None:
    envelopes = [envelope for envelope, _, _ in _events()]
    paid = unpack_data(envelopes[1], events_pb2.OrderPaid)
    assert (paid.payment_id, paid.amount.amount_minor) == ("pay_1", 2500)
    assert paid.pay_time.ToDatetime(tzinfo=UTC) == PAID
    fulfilled = unpack_data(envelopes[3], events_pb2.OrderFulfilled)
    assert (fulfilled.shipment_reference, fulfilled.actor_id) == ("ship-1", "admin")
    assert fulfilled.fulfill_time.ToDatetime(tzinfo=UTC) == LATER
    failed = unpack_data(envelopes[4], events_pb2.OrderFailed)
    assert (failed.reason, failed.previous_state) == ("lapsed", ORDER_STATE_CONFIRMED)
    assert failed.fail_time.ToDatetime(tzinfo=UTC) == LATER
