"""Protobuf ↔ domain: consumed payloads into domain events, requests into domain values, query
results into response messages. Used by the adapters (``api``, ``consume``) only."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from mercato.analytics.v1 import analytics_pb2
from mercato.auth.events.v1 import events_pb2 as auth_events
from mercato.orders.events.v1 import events_pb2 as order_events
from mercato.orders.v1 import orders_pb2
from mercato.type.v1 import money_pb2
from mercato_analytics.domain import (
    IGNORED,
    BucketSize,
    Freshness,
    Funnel,
    Ignored,
    InvalidEvent,
    InvalidRange,
    OrderEvent,
    OrderEventKind,
    RankBy,
    SaleLine,
    SalesBucket,
    TopProduct,
    UserRegistered,
)
from mercato_analytics.domain.aggregates import COUNTERS
from mercato_analytics.domain.events import (
    AGGREGATED_TYPES,
    AUTH_EVENTS,
    IGNORED_TYPES,
    ORDER_EVENTS,
)
from mercato_common.errors import FieldViolation
from mercato_common.kafka import Envelope, unpack_data
from mercato_common.timestamps import timestamp

__all__ = [
    "bucket_size",
    "envelope_time",
    "freshness_to_proto",
    "funnel_to_proto",
    "money",
    "rank_by",
    "requested_range",
    "sales_bucket_to_proto",
    "timestamp",
    "to_domain_event",
    "top_products_to_proto",
]

_V = TypeVar("_V")

# --- consumed payloads → domain events ------------------------------------------------------


def _time(message: Any, name: str) -> datetime:
    if not message.HasField(name):
        raise InvalidEvent(f"{type(message).__name__}.{name} is missing")
    ts: Timestamp = getattr(message, name)
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidEvent(f"{type(message).__name__}.{name} is not a valid time") from exc


def envelope_time(envelope: Envelope) -> datetime:
    """The event's time as the envelope states it (:class:`InvalidEvent` when missing)."""
    return _time(envelope, "time")


def _paid(paid: order_events.OrderPaid) -> dict[str, Any]:
    if not paid.HasField("amount"):
        raise InvalidEvent("OrderPaid.amount is missing")
    currency = paid.amount.currency_code
    lines = []
    for index, line in enumerate(paid.lines):
        if not line.HasField("line_total"):
            raise InvalidEvent(f"OrderPaid.lines[{index}].line_total is missing")
        if line.line_total.currency_code != currency:
            raise InvalidEvent(
                f"OrderPaid.lines[{index}] is in {line.line_total.currency_code!r}, "
                f"the order in {currency!r}"
            )
        lines.append(
            SaleLine(sku=line.sku, quantity=line.quantity, amount=line.line_total.amount_minor)
        )
    return {"currency": currency, "amount": paid.amount.amount_minor, "lines": tuple(lines)}


def _cancelled(cancelled: order_events.OrderCancelled) -> dict[str, Any]:
    after_payment = cancelled.previous_state == orders_pb2.ORDER_STATE_PAID
    if after_payment and not cancelled.HasField("total"):
        raise InvalidEvent("OrderCancelled.total is missing (refund of a paid order)")
    return {
        "currency": cancelled.total.currency_code,
        "amount": cancelled.total.amount_minor,
        "after_payment": after_payment,
    }


# Per order event: its payload type, its kind, the field of its own time and, for the kinds
# that carry money, what else it contributes.
_ORDER_EVENTS: Mapping[str, tuple[Any, OrderEventKind, str, Any]] = {
    "OrderPlaced": (order_events.OrderPlaced, OrderEventKind.PLACED, "place_time", None),
    "OrderPaid": (order_events.OrderPaid, OrderEventKind.PAID, "pay_time", _paid),
    "OrderCancelled": (
        order_events.OrderCancelled,
        OrderEventKind.CANCELLED,
        "cancel_time",
        _cancelled,
    ),
    "OrderFulfilled": (
        order_events.OrderFulfilled,
        OrderEventKind.FULFILLED,
        "fulfill_time",
        None,
    ),
    "OrderFailed": (order_events.OrderFailed, OrderEventKind.FAILED, "fail_time", None),
}


def _order_event(envelope: Envelope, name: str) -> OrderEvent:
    message_type, kind, time_field, details = _ORDER_EVENTS[name]
    message = unpack_data(envelope, message_type)
    return OrderEvent(
        kind,
        message.order_id,
        _time(message, time_field),
        _time(message, "place_time"),
        **(details(message) if details is not None else {}),
    )


def to_domain_event(envelope: Envelope) -> OrderEvent | UserRegistered | Ignored | None:
    """The domain event of an envelope; ``IGNORED`` for known types without aggregates, None for
    unknown types. Raises :class:`InvalidEvent` (or ``UndecodableMessageError`` for a payload
    of the wrong type) when the payload breaks the contract.
    """
    type_name = envelope.type
    if type_name in IGNORED_TYPES:
        return IGNORED
    if type_name not in AGGREGATED_TYPES:
        return None
    if type_name == AUTH_EVENTS + "UserRegistered":
        registered = unpack_data(envelope, auth_events.UserRegistered)
        return UserRegistered(registered.user_id, _time(registered, "register_time"))
    return _order_event(envelope, type_name.removeprefix(ORDER_EVENTS))


# --- requests → domain values ---------------------------------------------------------------

_SIZES = {
    analytics_pb2.BUCKET_MINUTE: BucketSize.MINUTE,
    analytics_pb2.BUCKET_HOUR: BucketSize.HOUR,
    analytics_pb2.BUCKET_DAY: BucketSize.DAY,
}
_RANK_BY = {
    analytics_pb2.RANK_BY_UNITS: RankBy.UNITS,
    analytics_pb2.RANK_BY_REVENUE: RankBy.REVENUE,
}


def _required(choices: Mapping[Any, _V], value: int, name: str, allowed: str) -> _V:
    choice = choices.get(value)
    if choice is None:
        raise InvalidRange(
            f"{name} is required", field_violations=[FieldViolation(name, f"must be {allowed}")]
        )
    return choice


def bucket_size(value: int) -> BucketSize | None:
    """The requested bucket size; None when unset (the use case applies the default)."""
    if value == analytics_pb2.BUCKET_UNSPECIFIED:
        return None
    return _required(_SIZES, value, "bucket", "MINUTE, HOUR or DAY")


def rank_by(value: int) -> RankBy:
    return _required(_RANK_BY, value, "rank_by", "UNITS or REVENUE")


def _when(ts: Timestamp, name: str) -> datetime:
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRange(
            f"{name} is not a valid time",
            field_violations=[FieldViolation(name, "not a valid timestamp")],
        ) from None


def requested_range(request: Any) -> tuple[datetime | None, datetime | None]:
    """``start_time`` and ``end_time`` of a request, None when unset (the use case applies the
    contract's defaults), not yet checked as a range."""
    start = _when(request.start_time, "start_time") if request.HasField("start_time") else None
    end = _when(request.end_time, "end_time") if request.HasField("end_time") else None
    return start, end


# --- domain values → responses --------------------------------------------------------------


def money(currency: str, amount: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=amount)


def sales_bucket_to_proto(bucket: SalesBucket) -> analytics_pb2.SalesBucket:
    return analytics_pb2.SalesBucket(
        start_time=timestamp(bucket.start),
        **{counter: getattr(bucket, counter) for counter in COUNTERS},
        sales=[
            analytics_pb2.CurrencySales(
                revenue=money(sales.currency, sales.revenue),
                refunds=money(sales.currency, sales.refunds),
                units=sales.units,
                orders_paid=sales.orders_paid,
            )
            for sales in bucket.sales
        ],
    )


def top_products_to_proto(products: list[TopProduct]) -> analytics_pb2.ListTopProductsResponse:
    return analytics_pb2.ListTopProductsResponse(
        products=[
            analytics_pb2.TopProduct(
                rank=product.rank,
                sku=product.sku,
                units=product.units,
                revenue=[money(code, amount) for code, amount in product.revenue],
            )
            for product in products
        ]
    )


def funnel_to_proto(funnel: Funnel) -> analytics_pb2.GetFunnelResponse:
    return analytics_pb2.GetFunnelResponse(**asdict(funnel))


def freshness_to_proto(fresh: Freshness) -> analytics_pb2.GetFreshnessResponse:
    response = analytics_pb2.GetFreshnessResponse(total_lag=fresh.total_lag)
    if fresh.newest_event_time is not None:
        response.newest_event_time.CopyFrom(timestamp(fresh.newest_event_time))
    if fresh.last_applied_time is not None:
        response.last_applied_time.CopyFrom(timestamp(fresh.last_applied_time))
    for partition in fresh.partitions:
        entry = analytics_pb2.PartitionLag(
            topic=partition.topic,
            partition=partition.partition,
            committed_offset=partition.committed_offset,
            end_offset=partition.end_offset,
            lag=partition.lag,
        )
        if partition.newest_event_time is not None:
            entry.newest_event_time.CopyFrom(timestamp(partition.newest_event_time))
        response.partitions.append(entry)
    return response
