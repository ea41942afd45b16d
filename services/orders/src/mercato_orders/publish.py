"""The events the orders service publishes (placed, paid, cancelled, fulfilled, failed).

Each event is built from the order as changed and written into the ``outbox`` table in the
transaction of the change; the outbox relay (``mercato_common.outbox.RelayRunner``, wired in
``app.py``) publishes them to
``mercato.orders.events.v1`` with the order id as the envelope subject (the Kafka key). Every
event carries the order id, the user id and the placement time, so consumers need no other event
to use it.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from google.protobuf.message import Message

from mercato.orders.events.v1 import events_pb2
from mercato_common.kafka import Envelope, new_envelope
from mercato_orders.convert import money_to_proto, state_to_proto, timestamp
from mercato_orders.domain.model import Order, OrderState

__all__ = [
    "SOURCE",
    "order_cancelled",
    "order_failed",
    "order_fulfilled",
    "order_paid",
    "order_placed",
]

SOURCE = "orders"


def _lines(order: Order) -> list[events_pb2.OrderLine]:
    return [
        events_pb2.OrderLine(
            sku=line.sku,
            quantity=line.quantity,
            unit_price=money_to_proto(line.unit_price),
            line_total=money_to_proto(line.line_total),
        )
        for line in order.lines
    ]


def _last_change_time(order: Order) -> datetime:
    return order.history[-1].time if order.history else order.update_time


def _event(message: Callable[..., Message], order: Order, **fields: Any) -> Envelope:
    """The event ``message`` of ``order``'s last change, with what every order event carries."""
    data = message(
        order_id=order.id, user_id=order.user_id, place_time=timestamp(order.place_time), **fields
    )
    return new_envelope(data, source=SOURCE, subject=order.id, time=_last_change_time(order))


def order_placed(order: Order) -> Envelope:
    return _event(
        events_pb2.OrderPlaced, order, lines=_lines(order), total=money_to_proto(order.total)
    )


def order_paid(order: Order) -> Envelope:
    return _event(
        events_pb2.OrderPaid,
        order,
        amount=money_to_proto(order.total),
        lines=_lines(order),
        payment_id=order.payment_id,
        pay_time=timestamp(_last_change_time(order)),
    )


def order_cancelled(order: Order, previous: OrderState) -> Envelope:
    change = order.history[-1]
    return _event(
        events_pb2.OrderCancelled,
        order,
        previous_state=state_to_proto(previous),
        total=money_to_proto(order.total),
        reason=change.reason,
        actor_id=change.actor,
        cancel_time=timestamp(change.time),
    )


def order_fulfilled(order: Order) -> Envelope:
    change = order.history[-1]
    return _event(
        events_pb2.OrderFulfilled,
        order,
        shipment_reference=order.shipment_reference,
        actor_id=change.actor,
        fulfill_time=timestamp(change.time),
    )


def order_failed(order: Order, previous: OrderState) -> Envelope:
    change = order.history[-1]
    return _event(
        events_pb2.OrderFailed,
        order,
        previous_state=state_to_proto(previous),
        reason=change.reason,
        fail_time=timestamp(change.time),
    )
