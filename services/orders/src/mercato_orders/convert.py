"""Domain objects ↔ protobuf messages of ``mercato.orders.v1``."""

from __future__ import annotations

from mercato.orders.v1 import orders_pb2
from mercato.type.v1 import money_pb2
from mercato_common.timestamps import optional_time, timestamp
from mercato_orders.domain.model import Money, Order, OrderState, RequestedLine

__all__ = [
    "money_from_proto",
    "money_to_proto",
    "optional_time",
    "order_to_proto",
    "requested_lines",
    "state_from_proto",
    "state_to_proto",
    "timestamp",
]

_STATES = {
    OrderState.PENDING: orders_pb2.ORDER_STATE_PENDING,
    OrderState.CONFIRMED: orders_pb2.ORDER_STATE_CONFIRMED,
    OrderState.PAID: orders_pb2.ORDER_STATE_PAID,
    OrderState.FULFILLED: orders_pb2.ORDER_STATE_FULFILLED,
    OrderState.CANCELLED: orders_pb2.ORDER_STATE_CANCELLED,
    OrderState.FAILED: orders_pb2.ORDER_STATE_FAILED,
}


def state_to_proto(state: OrderState | None) -> orders_pb2.OrderState.ValueType:
    return orders_pb2.ORDER_STATE_UNSPECIFIED if state is None else _STATES[state]


def state_from_proto(value: int) -> OrderState | None:
    """None for ORDER_STATE_UNSPECIFIED (as a filter: any state)."""
    for state, number in _STATES.items():
        if number == value:
            return state
    return None


def money_to_proto(money: Money) -> money_pb2.Money:
    return money_pb2.Money(currency_code=money.currency_code, amount_minor=money.amount_minor)


def money_from_proto(message: money_pb2.Money) -> Money:
    return Money(message.currency_code, int(message.amount_minor))


def requested_lines(order: orders_pb2.Order) -> list[RequestedLine]:
    return [RequestedLine(line.sku, int(line.quantity)) for line in order.lines]


def order_to_proto(order: Order) -> orders_pb2.Order:
    return orders_pb2.Order(
        id=order.id,
        user_id=order.user_id,
        state=state_to_proto(order.state),
        lines=[
            orders_pb2.OrderLine(
                sku=line.sku,
                quantity=line.quantity,
                product_name=line.product_name,
                unit_price=money_to_proto(line.unit_price),
                line_total=money_to_proto(line.line_total),
            )
            for line in order.lines
        ],
        total=money_to_proto(order.total),
        history=[
            orders_pb2.StateChange(
                from_state=state_to_proto(change.from_state),
                to_state=state_to_proto(change.to_state),
                time=timestamp(change.time),
                actor=change.actor,
                reason=change.reason,
            )
            for change in order.history
        ],
        payment_id=order.payment_id,
        state_reason=order.state_reason,
        create_time=timestamp(order.create_time),
        update_time=timestamp(order.update_time),
        shipment_reference=order.shipment_reference,
    )
