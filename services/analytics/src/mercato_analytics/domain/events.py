"""The domain view of the consumed events and their effect.

:class:`OrderEvent` and :class:`UserRegistered` with their contract checks (:class:`InvalidEvent`),
which event types feed an aggregate and which are known but ignored, and :func:`fact_document`,
the one document that is an event's whole effect (see ``store`` for why one document).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any, Final

from mercato_analytics.domain.buckets import MAX_TIME, MIN_TIME
from mercato_analytics.domain.errors import InvalidEvent

__all__ = [
    "AGGREGATED_TYPES",
    "AUTH_EVENTS",
    "IGNORED",
    "IGNORED_TYPES",
    "ORDER_EVENTS",
    "DomainEvent",
    "EventOrigin",
    "Ignored",
    "OrderEvent",
    "OrderEventKind",
    "SaleLine",
    "UserRegistered",
    "fact_document",
    "type_label",
]

CURRENCY = re.compile(r"^[A-Z]{3}$")
SKU = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,63}$")


class OrderEventKind(Enum):
    PLACED = "OrderPlaced"
    PAID = "OrderPaid"
    CANCELLED = "OrderCancelled"
    FULFILLED = "OrderFulfilled"
    FAILED = "OrderFailed"


@dataclass(frozen=True, slots=True)
class SaleLine:
    """One order line: units and the line total (minor units of the order's currency)."""

    sku: str
    quantity: int
    amount: int


@dataclass(frozen=True, slots=True)
class OrderEvent:
    """An order event as analytics sees it.

    ``time`` is the event's own time (placement, payment, cancellation, fulfilment, failure);
    ``place_time`` the order's placement time (the funnel's key). ``currency``/``amount`` are the
    paid amount (OrderPaid) or the order total (OrderCancelled: the refund when
    ``after_payment``); ``lines`` are the paid lines (OrderPaid).
    """

    kind: OrderEventKind
    order_id: str
    time: datetime
    place_time: datetime
    currency: str = ""
    amount: int = 0
    lines: tuple[SaleLine, ...] = ()
    after_payment: bool = False

    def __post_init__(self) -> None:
        _check_time("time", self.time)
        _check_time("place_time", self.place_time)
        if not self.order_id:
            raise InvalidEvent("order_id is empty")
        if self.kind is OrderEventKind.PAID or (
            self.kind is OrderEventKind.CANCELLED and self.after_payment
        ):
            if not CURRENCY.match(self.currency):
                raise InvalidEvent(f"currency {self.currency!r} is not an ISO 4217 code")
            if self.amount < 0:
                raise InvalidEvent("amount is negative")
        for line in self.lines:
            if not SKU.match(line.sku):
                raise InvalidEvent(f"sku {line.sku!r} is not a SKU")
            if line.quantity < 1:
                raise InvalidEvent(f"quantity of {line.sku} is below 1")
            if line.amount < 0:
                raise InvalidEvent(f"line total of {line.sku} is negative")


@dataclass(frozen=True, slots=True)
class UserRegistered:
    user_id: str
    time: datetime

    def __post_init__(self) -> None:
        _check_time("register_time", self.time)


def _check_time(name: str, when: datetime) -> None:
    if when.tzinfo is None:
        raise InvalidEvent(f"{name} is not timezone-aware")
    if not MIN_TIME <= when < MAX_TIME:
        raise InvalidEvent(f"{name} {when.isoformat()} is out of range")


DomainEvent = OrderEvent | UserRegistered


class Ignored:
    """Marks a known event type that feeds no aggregate."""


IGNORED: Final = Ignored()


@dataclass(frozen=True, slots=True)
class EventOrigin:
    """Which event a fact comes from (its envelope id, type and time) and the record it was read
    from (topic, partition, offset)."""

    event_id: str
    event_type: str
    event_time: datetime
    topic: str
    partition: int
    offset: int


# --- which types count ------------------------------------------------------------------------

# Prefixes of the event type names (the full protobuf names of the payloads).
AUTH_EVENTS: Final = "mercato.auth.events.v1."
ORDER_EVENTS: Final = "mercato.orders.events.v1."
_CATALOG_EVENTS: Final = "mercato.catalog.events.v1."

# Known event types that feed no aggregate: consumed, acknowledged, counted as "ignored".
IGNORED_TYPES: Final = frozenset(
    {
        AUTH_EVENTS + "UserRolesChanged",
        AUTH_EVENTS + "UserDisabled",
        *(
            _CATALOG_EVENTS + name
            for name in (
                "ProductCreated",
                "ProductUpdated",
                "ProductArchived",
                "StockAdjusted",
                "StockLow",
                "StockReserved",
                "StockReleased",
                "StockCommitted",
            )
        ),
    }
)
AGGREGATED_TYPES: Final = frozenset(
    {AUTH_EVENTS + "UserRegistered", *(ORDER_EVENTS + kind.value for kind in OrderEventKind)}
)


def type_label(type_name: str) -> str:
    """The metrics label of an event type: its short name when known, else ``other``."""
    if type_name in AGGREGATED_TYPES or type_name in IGNORED_TYPES:
        return type_name.rsplit(".", 1)[-1]
    return "other"


# --- the effect of an event: one fact document ---------------------------------------------

# Field names of a fact document (the store adds _id = event id and the record's provenance).
F_KIND = "kind"
F_TIME = "t"  # the event's own time: the bucket it counts in
F_PLACE_TIME = "place_time"  # orders: the placement time, the funnel's key
F_CURRENCY = "currency"
F_AMOUNT = "amount"  # OrderPaid: revenue; OrderCancelled after payment: the refund
F_UNITS = "units"  # OrderPaid: units of all lines
F_AFTER_PAYMENT = "after_payment"  # OrderCancelled from PAID
F_LINES = "lines"  # OrderPaid: [{sku, units, revenue}]
K_USER_REGISTERED = "UserRegistered"


def fact_document(event: OrderEvent | UserRegistered) -> dict[str, Any]:
    """What analytics keeps of an event: everything every aggregate needs, nothing more.

    Aggregates are sums over these documents, so the order in which events arrive cannot
    change them, and an event counts in the bucket of its own time.
    """
    if isinstance(event, UserRegistered):
        return {F_KIND: K_USER_REGISTERED, F_TIME: event.time}
    doc: dict[str, Any] = {
        F_KIND: event.kind.value,
        F_TIME: event.time,
        F_PLACE_TIME: event.place_time,
        "order_id": event.order_id,
    }
    if event.kind is OrderEventKind.PAID:
        doc[F_CURRENCY] = event.currency
        doc[F_AMOUNT] = event.amount
        doc[F_UNITS] = sum(line.quantity for line in event.lines)
        doc[F_LINES] = [
            {"sku": sku, "units": units, "revenue": revenue}
            for sku, (units, revenue) in _merge_lines(event.lines).items()
        ]
    elif event.kind is OrderEventKind.CANCELLED:
        doc[F_AFTER_PAYMENT] = event.after_payment
        if event.after_payment:
            doc[F_CURRENCY] = event.currency
            doc[F_AMOUNT] = event.amount
    return doc


def _merge_lines(lines: Iterable[SaleLine]) -> dict[str, tuple[int, int]]:
    """Units and revenue per SKU (an order may list a SKU twice), ordered by SKU."""
    merged: dict[str, tuple[int, int]] = {}
    for line in lines:
        units, revenue = merged.get(line.sku, (0, 0))
        merged[line.sku] = (units + line.quantity, revenue + line.amount)
    return dict(sorted(merged.items()))
