"""Analytics rules and types, free of gRPC and of any driver.

* Time buckets: UTC-aligned minutes, hours and days (truncation, rounding, enumeration) and the
  validation of requested ranges.
* Events: the domain view of the order and user events (:class:`OrderEvent`,
  :class:`UserRegistered`) with their contract checks (:class:`InvalidEvent`), and
  :func:`fact_document`, the one document that is an event's whole effect.
* Queries: folding fact documents into a sales summary (per bucket of each fact's own time) and
  a funnel (by the order's placement time, which every order event carries), and ranking
  products. Every figure is a count or a sum over facts, so the order in which events arrived
  cannot change it.
* Errors: root :class:`AnalyticsError` (domain ``analytics.mercato``).
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Any, ClassVar

from mercato_common.errors import FieldViolation, InvalidArgument, MercatoError, Unavailable

__all__ = [
    "DEFAULT_TOP_LIMIT",
    "MAX_TIME",
    "MIN_TIME",
    "AnalyticsError",
    "BucketSize",
    "CurrencyRequired",
    "CurrencySales",
    "Freshness",
    "Funnel",
    "InvalidEvent",
    "InvalidRange",
    "KafkaUnavailable",
    "OrderEvent",
    "OrderEventKind",
    "PartitionLag",
    "PartitionProgress",
    "ProductRow",
    "RankBy",
    "SaleLine",
    "SalesBucket",
    "SalesSummary",
    "TopProduct",
    "UserRegistered",
    "bucket_starts",
    "ceil_time",
    "check_range",
    "fact_document",
    "floor_time",
    "fold_funnel",
    "fold_sales",
    "freshness",
    "product_rows",
    "rank_products",
]

# --- errors ---------------------------------------------------------------------------------


class AnalyticsError(MercatoError):
    """Root of the analytics service's errors."""

    domain: ClassVar[str] = "analytics.mercato"


class InvalidRange(AnalyticsError, InvalidArgument):
    default_reason = "INVALID_RANGE"


class CurrencyRequired(AnalyticsError, InvalidArgument):
    default_reason = "CURRENCY_REQUIRED"


class KafkaUnavailable(AnalyticsError, Unavailable):
    """Kafka did not answer (the consumer positions cannot be read)."""

    default_reason = "KAFKA_UNAVAILABLE"


class InvalidEvent(ValueError):
    """An event whose payload breaks the contract: it can never be applied (dead-letter it)."""


# --- time buckets ---------------------------------------------------------------------------

# Bounds of the times the service accepts (events and query ranges): bucket arithmetic stays
# far from datetime's limits, and nonsense like year 1 is refused instead of stored.
MIN_TIME = datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME = datetime(9000, 1, 1, tzinfo=UTC)


class BucketSize(Enum):
    """A bucket size; the value is the short code stored in the documents."""

    MINUTE = "m"
    HOUR = "h"
    DAY = "d"

    @property
    def step(self) -> timedelta:
        return _STEPS[self]

    @property
    def max_range(self) -> timedelta:
        """Longest range a sales summary may ask for with this bucket size (the contract's)."""
        return _MAX_RANGES[self]


_STEPS = {
    BucketSize.MINUTE: timedelta(minutes=1),
    BucketSize.HOUR: timedelta(hours=1),
    BucketSize.DAY: timedelta(days=1),
}
_MAX_RANGES = {
    BucketSize.MINUTE: timedelta(hours=24),
    BucketSize.HOUR: timedelta(days=31),
    BucketSize.DAY: timedelta(days=1096),
}


def _utc(when: datetime) -> datetime:
    if when.tzinfo is None:
        raise ValueError("times must be timezone-aware")
    return when.astimezone(UTC)


def floor_time(when: datetime, size: BucketSize) -> datetime:
    """Start of the bucket of ``size`` that contains ``when`` (UTC)."""
    when = _utc(when)
    if size is BucketSize.MINUTE:
        return when.replace(second=0, microsecond=0)
    if size is BucketSize.HOUR:
        return when.replace(minute=0, second=0, microsecond=0)
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def ceil_time(when: datetime, size: BucketSize) -> datetime:
    """``when`` rounded up to a bucket boundary (unchanged when already on one)."""
    floor = floor_time(when, size)
    return floor if floor == _utc(when) else floor + size.step


def bucket_starts(start: datetime, end: datetime, size: BucketSize) -> list[datetime]:
    """Starts of the buckets covering ``[start, end)``, both already aligned to ``size``."""
    out: list[datetime] = []
    current = start
    while current < end:
        out.append(current)
        current += size.step
    return out


def check_range(
    start: datetime, end: datetime, *, max_range: timedelta | None = None
) -> tuple[datetime, datetime]:
    """Validate a requested ``[start, end)`` (the server's interceptor checked it too)."""
    violations: list[FieldViolation] = []
    for name, value in (("start_time", start), ("end_time", end)):
        if not MIN_TIME <= value < MAX_TIME:
            violations.append(FieldViolation(name, "must be between 1970 and 9000"))
    if violations:
        raise InvalidRange("time out of range", field_violations=violations)
    if start >= end:
        raise InvalidRange(
            "start_time must be before end_time",
            field_violations=[FieldViolation("end_time", "must be after start_time")],
        )
    if max_range is not None and end - start > max_range:
        raise InvalidRange(
            "range too long for the bucket size",
            field_violations=[FieldViolation("end_time", f"range longer than {max_range}")],
        )
    return _utc(start), _utc(end)


# --- events and their effect ----------------------------------------------------------------

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


# --- queries --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CurrencySales:
    currency: str
    revenue: int = 0
    refunds: int = 0
    units: int = 0
    orders_paid: int = 0


@dataclass(frozen=True, slots=True)
class SalesBucket:
    start: datetime
    orders_placed: int = 0
    orders_paid: int = 0
    orders_cancelled: int = 0
    orders_fulfilled: int = 0
    orders_failed: int = 0
    new_users: int = 0
    sales: tuple[CurrencySales, ...] = ()


@dataclass(frozen=True, slots=True)
class SalesSummary:
    buckets: tuple[SalesBucket, ...]
    total: SalesBucket


_COUNTER_OF_KIND = {
    OrderEventKind.PLACED.value: "orders_placed",
    OrderEventKind.PAID.value: "orders_paid",
    OrderEventKind.CANCELLED.value: "orders_cancelled",
    OrderEventKind.FULFILLED.value: "orders_fulfilled",
    OrderEventKind.FAILED.value: "orders_failed",
    K_USER_REGISTERED: "new_users",
}
COUNTERS = tuple(_COUNTER_OF_KIND.values())
SALES_FIELDS = ("revenue", "refunds", "units", "orders_paid")


class _SalesAcc:
    def __init__(self) -> None:
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.sales: dict[str, dict[str, int]] = {}

    def add(self, fact: Mapping[str, Any], currency: str) -> None:
        kind = fact.get(F_KIND)
        counter = _COUNTER_OF_KIND.get(str(kind))
        if counter is None:
            return
        self.counters[counter] += 1
        code = fact.get(F_CURRENCY)
        if not code or (currency and code != currency):
            return
        if kind == OrderEventKind.PAID.value:
            acc = self._currency(code)
            acc["revenue"] += int(fact.get(F_AMOUNT, 0))
            acc["units"] += int(fact.get(F_UNITS, 0))
            acc["orders_paid"] += 1
        elif kind == OrderEventKind.CANCELLED.value and fact.get(F_AFTER_PAYMENT):
            self._currency(code)["refunds"] += int(fact.get(F_AMOUNT, 0))

    def _currency(self, code: str) -> dict[str, int]:
        return self.sales.setdefault(code, dict.fromkeys(SALES_FIELDS, 0))

    def merge(self, other: _SalesAcc) -> None:
        for name, value in other.counters.items():
            self.counters[name] += value
        for code, figures in other.sales.items():
            acc = self._currency(code)
            for name, value in figures.items():
                acc[name] += value

    def bucket(self, start: datetime) -> SalesBucket:
        return SalesBucket(
            start=start,
            sales=tuple(
                CurrencySales(currency=code, **figures)
                for code, figures in sorted(self.sales.items())
            ),
            **self.counters,
        )


def fold_sales(
    facts: Iterable[Mapping[str, Any]],
    *,
    size: BucketSize,
    start: datetime,
    end: datetime,
    currency: str = "",
) -> SalesSummary:
    """Count and sum fact documents into every bucket of ``[start, end)`` (aligned to ``size``).

    A fact counts in the bucket of its own time (``t``); facts outside the range are ignored;
    empty buckets are included; ``currency`` keeps only that currency's sales (the counters are
    never filtered).
    """
    per_bucket: dict[datetime, _SalesAcc] = defaultdict(_SalesAcc)
    for fact in facts:
        when = _utc(fact[F_TIME])
        if start <= when < end:
            per_bucket[floor_time(when, size)].add(fact, currency)
    total = _SalesAcc()
    buckets: list[SalesBucket] = []
    for bucket_start in bucket_starts(start, end, size):
        acc = per_bucket.get(bucket_start)
        if acc is None:
            buckets.append(SalesBucket(start=bucket_start))
            continue
        buckets.append(acc.bucket(bucket_start))
        total.merge(acc)
    return SalesSummary(buckets=tuple(buckets), total=total.bucket(start))


@dataclass(frozen=True, slots=True)
class Funnel:
    placed: int = 0
    paid: int = 0
    fulfilled: int = 0
    cancelled: int = 0
    cancelled_after_payment: int = 0
    failed: int = 0


_FUNNEL_STAGE = {
    OrderEventKind.PLACED.value: "placed",
    OrderEventKind.PAID.value: "paid",
    OrderEventKind.FULFILLED.value: "fulfilled",
    OrderEventKind.CANCELLED.value: "cancelled",
    OrderEventKind.FAILED.value: "failed",
}


def fold_funnel(facts: Iterable[Mapping[str, Any]]) -> Funnel:
    """Count the order facts (of the orders placed in the range) per stage.

    Each order event carries its order's placement time, so every stage is counted by it,
    whichever event arrived first.
    """
    totals = dict.fromkeys(
        ("placed", "paid", "fulfilled", "cancelled", "cancelled_after_payment", "failed"), 0
    )
    for fact in facts:
        stage = _FUNNEL_STAGE.get(str(fact.get(F_KIND)))
        if stage is None:
            continue
        totals[stage] += 1
        if stage == "cancelled" and fact.get(F_AFTER_PAYMENT):
            totals["cancelled_after_payment"] += 1
    return Funnel(**totals)


class RankBy(Enum):
    UNITS = "units"
    REVENUE = "revenue"


DEFAULT_TOP_LIMIT = 10


@dataclass(frozen=True, slots=True)
class ProductRow:
    """Units and revenue of one SKU in one currency over a window (summed by the store)."""

    sku: str
    currency: str
    units: int
    revenue: int


@dataclass(frozen=True, slots=True)
class TopProduct:
    rank: int
    sku: str
    units: int
    revenue: tuple[tuple[str, int], ...]  # (currency, amount), ordered by currency


def product_rows(facts: Iterable[Mapping[str, Any]]) -> list[ProductRow]:
    """Units and revenue per (SKU, currency) of OrderPaid fact documents."""
    totals: dict[tuple[str, str], list[int]] = {}
    for fact in facts:
        code = str(fact.get(F_CURRENCY, ""))
        for line in fact.get(F_LINES) or ():
            acc = totals.setdefault((str(line["sku"]), code), [0, 0])
            acc[0] += int(line.get("units", 0))
            acc[1] += int(line.get("revenue", 0))
    return [
        ProductRow(sku=sku, currency=code, units=units, revenue=revenue)
        for (sku, code), (units, revenue) in sorted(totals.items())
    ]


def rank_products(
    rows: Iterable[ProductRow], *, rank_by: RankBy, currency: str = "", limit: int = 0
) -> list[TopProduct]:
    """Best first (units, or revenue in ``currency``), ties broken by SKU; ``limit`` 0 = 10."""
    if rank_by is RankBy.REVENUE and not currency:
        raise CurrencyRequired(
            "currency_code is required when ranking by revenue",
            field_violations=[FieldViolation("currency_code", "required with RANK_BY_REVENUE")],
        )
    units: dict[str, int] = defaultdict(int)
    revenue: dict[str, dict[str, int]] = defaultdict(dict)
    for row in rows:
        if currency and row.currency != currency:
            continue
        units[row.sku] += row.units
        per_currency = revenue[row.sku]
        per_currency[row.currency] = per_currency.get(row.currency, 0) + row.revenue
    if rank_by is RankBy.UNITS:
        ordered = sorted(units, key=lambda sku: (-units[sku], sku))
    else:
        ordered = sorted(units, key=lambda sku: (-revenue[sku].get(currency, 0), sku))
    top = ordered[: limit or DEFAULT_TOP_LIMIT]
    return [
        TopProduct(
            rank=index,
            sku=sku,
            units=units[sku],
            revenue=tuple(sorted(revenue[sku].items())),
        )
        for index, sku in enumerate(top, start=1)
    ]


# --- freshness ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """What the consumers recorded for one partition (stored, flushed periodically)."""

    topic: str
    partition: int
    newest_event_time: datetime | None = None
    last_applied_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed_offset: int
    end_offset: int
    newest_event_time: datetime | None = None

    @property
    def lag(self) -> int:
        return max(self.end_offset - self.committed_offset, 0)


@dataclass(frozen=True, slots=True)
class Freshness:
    newest_event_time: datetime | None
    last_applied_time: datetime | None
    partitions: tuple[PartitionLag, ...] = field(default=())

    @property
    def total_lag(self) -> int:
        return sum(partition.lag for partition in self.partitions)


def freshness(
    positions: Sequence[tuple[str, int, int, int]], progress: Iterable[PartitionProgress]
) -> Freshness:
    """Combine Kafka positions ``(topic, partition, committed, end)`` with stored progress."""
    by_partition = {(p.topic, p.partition): p for p in progress}
    newest = [p.newest_event_time for p in by_partition.values() if p.newest_event_time]
    applied = [p.last_applied_time for p in by_partition.values() if p.last_applied_time]
    partitions = tuple(
        PartitionLag(
            topic=topic,
            partition=partition,
            committed_offset=committed,
            end_offset=end,
            newest_event_time=(
                by_partition[(topic, partition)].newest_event_time
                if (topic, partition) in by_partition
                else None
            ),
        )
        for topic, partition, committed, end in sorted(positions)
    )
    return Freshness(
        newest_event_time=max(newest) if newest else None,
        last_applied_time=max(applied) if applied else None,
        partitions=partitions,
    )
