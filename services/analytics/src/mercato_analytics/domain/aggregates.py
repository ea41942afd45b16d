"""The aggregates, folded from fact documents at query time: the sales summary (per bucket of
each fact's own time), the funnel (by the order's placement time, which every order event
carries) and the product ranking. Every figure is a count or a sum over facts, so the order in
which events arrived cannot change it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from mercato_analytics.domain.buckets import BucketSize, as_utc, bucket_starts, floor_time
from mercato_analytics.domain.errors import CurrencyRequired
from mercato_analytics.domain.events import (
    F_AFTER_PAYMENT,
    F_AMOUNT,
    F_CURRENCY,
    F_KIND,
    F_LINES,
    F_TIME,
    F_UNITS,
    K_USER_REGISTERED,
    OrderEventKind,
)
from mercato_common.errors import FieldViolation

__all__ = [
    "DEFAULT_TOP_LIMIT",
    "FUNNEL_STAGES",
    "CurrencySales",
    "Funnel",
    "ProductRow",
    "RankBy",
    "SalesBucket",
    "SalesFigures",
    "SalesSummary",
    "TopProduct",
    "add_lines",
    "count_stage",
    "fold_funnel",
    "fold_sales",
    "product_rows",
    "rank_products",
    "rows_of",
    "summarize",
]


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


class SalesFigures:
    """Counters and per-currency sales of a set of facts (a bucket, or a roll-up)."""

    def __init__(self) -> None:
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        self.sales: dict[str, dict[str, int]] = {}

    def add(self, fact: Mapping[str, Any]) -> None:
        """Count one fact; its sales figures are kept per currency (filtered in ``bucket``)."""
        kind = fact.get(F_KIND)
        counter = _COUNTER_OF_KIND.get(str(kind))
        if counter is None:
            return
        self.counters[counter] += 1
        code = fact.get(F_CURRENCY)
        if not code:
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

    def merge(self, other: SalesFigures) -> None:
        for name, value in other.counters.items():
            self.counters[name] += value
        for code, figures in other.sales.items():
            acc = self._currency(code)
            for name, value in figures.items():
                acc[name] += value

    def bucket(self, start: datetime, currency: str = "") -> SalesBucket:
        """The bucket; ``currency`` keeps only that currency's sales (counters are never
        filtered)."""
        return SalesBucket(
            start=start,
            sales=tuple(
                CurrencySales(currency=code, **figures)
                for code, figures in sorted(self.sales.items())
                if not currency or code == currency
            ),
            **self.counters,
        )

    def document(self) -> dict[str, Any]:
        return {
            "counters": dict(self.counters),
            "sales": {code: dict(figures) for code, figures in self.sales.items()},
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> SalesFigures:
        acc = cls()
        for name, value in (doc.get("counters") or {}).items():
            if name in acc.counters:
                acc.counters[name] = int(value)
        for code, figures in (doc.get("sales") or {}).items():
            acc.sales[code] = {name: int(figures.get(name, 0)) for name in SALES_FIELDS}
        return acc


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
    per_bucket: dict[datetime, SalesFigures] = defaultdict(SalesFigures)
    for fact in facts:
        when = as_utc(fact[F_TIME])
        if start <= when < end:
            per_bucket[floor_time(when, size)].add(fact)
    return summarize(per_bucket, size=size, start=start, end=end, currency=currency)


def summarize(
    per_bucket: Mapping[datetime, SalesFigures],
    *,
    size: BucketSize,
    start: datetime,
    end: datetime,
    currency: str = "",
) -> SalesSummary:
    """Every bucket of ``size`` over ``[start, end)`` from the figures of each bucket start
    (missing ones are empty) and their total; ``currency`` as in :func:`fold_sales`."""
    total = SalesFigures()
    buckets: list[SalesBucket] = []
    for bucket_start in bucket_starts(start, end, size):
        acc = per_bucket.get(bucket_start)
        if acc is None:
            buckets.append(SalesBucket(start=bucket_start))
            continue
        buckets.append(acc.bucket(bucket_start, currency))
        total.merge(acc)
    return SalesSummary(buckets=tuple(buckets), total=total.bucket(start, currency))


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
    totals = dict.fromkeys(FUNNEL_STAGES, 0)
    for fact in facts:
        count_stage(totals, fact)
    return Funnel(**totals)


FUNNEL_STAGES = ("placed", "paid", "fulfilled", "cancelled", "cancelled_after_payment", "failed")


def count_stage(totals: dict[str, int], fact: Mapping[str, Any]) -> None:
    """Count one order fact in its funnel stage (``totals`` is keyed by :data:`FUNNEL_STAGES`)."""
    stage = _FUNNEL_STAGE.get(str(fact.get(F_KIND)))
    if stage is None:
        return
    totals[stage] += 1
    if stage == "cancelled" and fact.get(F_AFTER_PAYMENT):
        totals["cancelled_after_payment"] += 1


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
        add_lines(totals, fact)
    return rows_of(totals)


def add_lines(totals: dict[tuple[str, str], list[int]], fact: Mapping[str, Any]) -> None:
    """Add the paid lines of one fact to ``totals``: (SKU, currency) -> [units, revenue]."""
    code = str(fact.get(F_CURRENCY, ""))
    for line in fact.get(F_LINES) or ():
        acc = totals.setdefault((str(line["sku"]), code), [0, 0])
        acc[0] += int(line.get("units", 0))
        acc[1] += int(line.get("revenue", 0))


def rows_of(totals: Mapping[tuple[str, str], Sequence[int]]) -> list[ProductRow]:
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
