"""Orders, their lines and money, and the state machine. Pure: no I/O, no gRPC, no driver.

State machine (``TRANSITIONS``, in :mod:`mercato_orders.domain.states`)::

    (new) -> PENDING -> CONFIRMED -> PAID -> FULFILLED
             PENDING/CONFIRMED/PAID -> CANCELLED
             PENDING/CONFIRMED -> FAILED

Every change goes through :func:`transition`, which refuses an illegal one with
:class:`InvalidStateTransition` (naming the current state) and appends a :class:`StateChange`
(time, actor, reason) to the order's history.

An order is stored for the first time already CONFIRMED (its stock reserved), with two history
entries: ``(new) -> PENDING`` (the request was accepted, by the user) and ``PENDING ->
CONFIRMED`` (stock reserved, by "system"). No order is ever stored PENDING, so a create that
fails leaves no order behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from mercato_orders.domain.errors import InvalidStateTransition, TotalTooLarge
from mercato_orders.domain.states import TRANSITIONS, OrderState, can_transition

__all__ = [
    "INT64_MAX",
    "SYSTEM_ACTOR",
    "TRANSITIONS",
    "Money",
    "Order",
    "OrderLine",
    "OrderState",
    "RequestedLine",
    "StateChange",
    "can_transition",
    "sum_money",
    "transition",
]

INT64_MAX = 2**63 - 1
# Actor of changes made by the service itself (saga, expiry, reconciliation).
SYSTEM_ACTOR = "system"


@dataclass(frozen=True, slots=True)
class Money:
    """An amount in integer minor units of one ISO 4217 currency. Never a float."""

    currency_code: str
    amount_minor: int

    def __post_init__(self) -> None:
        if type(self.amount_minor) is not int:  # bool and float are refused alike
            raise TypeError("amount_minor must be an int")
        if not -INT64_MAX - 1 <= self.amount_minor <= INT64_MAX:
            raise TotalTooLarge()

    def times(self, quantity: int) -> Money:
        """This amount ``quantity`` times; :class:`TotalTooLarge` past int64."""
        return Money(self.currency_code, self.amount_minor * quantity)

    def plus(self, other: Money) -> Money:
        if other.currency_code != self.currency_code:
            raise ValueError("amounts in different currencies are never added")
        return Money(self.currency_code, self.amount_minor + other.amount_minor)


def sum_money(amounts: Sequence[Money]) -> Money:
    """Sum of amounts of one currency (at least one amount)."""
    if not amounts:
        raise ValueError("nothing to sum")
    total = amounts[0]
    for amount in amounts[1:]:
        total = total.plus(amount)
    return total


@dataclass(frozen=True, slots=True)
class RequestedLine:
    """What a client asks for: a SKU and a quantity."""

    sku: str
    quantity: int


@dataclass(frozen=True, slots=True)
class OrderLine:
    """A placed line: the catalog's name and unit price at placement time."""

    sku: str
    quantity: int
    product_name: str
    unit_price: Money

    @property
    def line_total(self) -> Money:
        return self.unit_price.times(self.quantity)


@dataclass(frozen=True, slots=True)
class StateChange:
    from_state: OrderState | None
    to_state: OrderState
    time: datetime
    actor: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Order:
    id: str
    user_id: str
    state: OrderState
    lines: tuple[OrderLine, ...]
    total: Money
    create_time: datetime
    update_time: datetime
    history: tuple[StateChange, ...] = ()
    payment_id: str = ""
    state_reason: str = ""
    shipment_reference: str = ""
    idempotency_key: str = ""
    # Side effects owed to other systems after a committed change (done by the service right
    # after the commit, else by the reconciler): give the stock back, refund the payment.
    release_pending: bool = False
    refund_pending: bool = False
    version: int = 1

    @property
    def place_time(self) -> datetime:
        return self.create_time

    def changed(self, **changes: object) -> Order:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def transition(
    order: Order,
    target: OrderState,
    *,
    actor: str,
    now: datetime,
    action: str,
    reason: str = "",
    **changes: object,
) -> Order:
    """``order`` moved to ``target`` (history appended, version bumped, ``changes`` applied).

    Raises :class:`InvalidStateTransition` with the current state if the move is illegal.
    """
    if not can_transition(order.state, target):
        raise InvalidStateTransition(order.state, action)
    change = StateChange(order.state, target, now, actor, reason)
    return order.changed(
        state=target,
        history=(*order.history, change),
        update_time=now,
        version=order.version + 1,
        **changes,
    )
