"""The order states and the state machine's legal moves. Pure: no I/O, no gRPC, no driver.

Its own module so that the errors (which name the current state) and the model (which raises
them) both depend on it, and not on each other.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum

__all__ = ["TRANSITIONS", "OrderState", "can_transition"]


class OrderState(Enum):
    PENDING = "PENDING"
    CONFIRMED = "CONFIRMED"
    PAID = "PAID"
    FULFILLED = "FULFILLED"
    CANCELLED = "CANCELLED"
    FAILED = "FAILED"

    @property
    def proto_name(self) -> str:
        """The ``mercato.orders.v1.OrderState`` value name, e.g. ``ORDER_STATE_PAID``."""
        return f"ORDER_STATE_{self.value}"

    @property
    def terminal(self) -> bool:
        return not TRANSITIONS[self]


# Where each state may go; ``None`` is an order not placed yet.
TRANSITIONS: Mapping[OrderState | None, frozenset[OrderState]] = {
    None: frozenset({OrderState.PENDING}),
    OrderState.PENDING: frozenset({OrderState.CONFIRMED, OrderState.CANCELLED, OrderState.FAILED}),
    OrderState.CONFIRMED: frozenset({OrderState.PAID, OrderState.CANCELLED, OrderState.FAILED}),
    OrderState.PAID: frozenset({OrderState.FULFILLED, OrderState.CANCELLED}),
    OrderState.FULFILLED: frozenset(),
    OrderState.CANCELLED: frozenset(),
    OrderState.FAILED: frozenset(),
}


def can_transition(current: OrderState | None, target: OrderState) -> bool:
    return target in TRANSITIONS[current]
