"""The events the orders service publishes (placed, paid, cancelled, fulfilled, failed).

Each event is built from the order as changed and written into the ``outbox`` table in the
transaction of the change; the outbox relay (``mercato_common.outbox.RelayRunner``, wired in
``app.py``) publishes them to
``mercato.orders.events.v1`` with the order id as the envelope subject (the Kafka key). Every
event carries the order id, the user id and the placement time, so consumers need no other event
to use it.
"""

from __future__ import annotations

from datetime import datetime

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


def _envelope(data: Message, order: Order, when: datetime) -> Envelope:
    return new_envelope(data, source=SOURCE, subject=order.id, time=when)


def _last_change_time(order: Order) -> datetime:
    return order.history[-1].time if order.history else order.update_time


def order_placed(order: Order) -> Envelope:
    when = _last_change_time(order)
    data = events_pb2.OrderPlaced(
        order_id=order.id,
        user_id=order.user_id,
        lines=_lines(order),
        total=money_to_proto(order.total),
        place_time=timestamp(order.place_time),
    )
    return _envelope(data, order, when)


def order_paid(order: Order) -> Envelope:
    when = _last_change_time(order)
    data = events_pb2.OrderPaid(
        order_id=order.id,
        user_id=order.user_id,
        amount=money_to_proto(order.total),
        lines=_lines(order),
        payment_id=order.payment_id,
        place_time=timestamp(order.place_time),
        pay_time=timestamp(when),
    )
    return _envelope(data, order, when)


def order_cancelled(order: Order, previous: OrderState) -> Envelope:
    change = order.history[-1]
    data = events_pb2.OrderCancelled(
        order_id=order.id,
        user_id=order.user_id,
        previous_state=state_to_proto(previous),
        total=money_to_proto(order.total),
        reason=change.reason,
        actor_id=change.actor,
        place_time=timestamp(order.place_time),
        cancel_time=timestamp(change.time),
    )
    return _envelope(data, order, change.time)


def order_fulfilled(order: Order) -> Envelope:
    change = order.history[-1]
    data = events_pb2.OrderFulfilled(
        order_id=order.id,
        user_id=order.user_id,
        shipment_reference=order.shipment_reference,
        actor_id=change.actor,
        place_time=timestamp(order.place_time),
        fulfill_time=timestamp(change.time),
    )
    return _envelope(data, order, change.time)


def order_failed(order: Order, previous: OrderState) -> Envelope:
    change = order.history[-1]
    data = events_pb2.OrderFailed(
        order_id=order.id,
        user_id=order.user_id,
        previous_state=state_to_proto(previous),
        reason=change.reason,
        place_time=timestamp(order.place_time),
        fail_time=timestamp(change.time),
    )
    return _envelope(data, order, change.time)
