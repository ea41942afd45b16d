"""Buckets, ranges, event checks, fact documents and the folds (no network)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from mercato_analytics.convert import to_domain_event
from mercato_analytics.domain import (
    BucketSize,
    CurrencyRequired,
    InvalidEvent,
    InvalidRange,
    OrderEvent,
    OrderEventKind,
    PartitionProgress,
    ProductRow,
    RankBy,
    SaleLine,
    UserRegistered,
    bucket_starts,
    ceil_time,
    check_range,
    fact_document,
    floor_time,
    fold_funnel,
    fold_sales,
    freshness,
    rank_products,
)
from mercato_analytics.samples import simulate

T = datetime(2026, 3, 14, 15, 9, 26, 535000, tzinfo=UTC)


def _paid(order: str, when: datetime, *, currency: str = "EUR", place: datetime | None = None):
    return OrderEvent(
        OrderEventKind.PAID,
        order,
        when,
        place or when - timedelta(minutes=1),
        currency=currency,
        amount=2500,
        lines=(SaleLine("MUG-1", 2, 1000), SaleLine("TEA-2", 1, 500), SaleLine("MUG-1", 1, 0)),
    )


def test_floor_and_ceil() -> None:
    assert floor_time(T, BucketSize.MINUTE) == datetime(2026, 3, 14, 15, 9, tzinfo=UTC)
    assert floor_time(T, BucketSize.HOUR) == datetime(2026, 3, 14, 15, tzinfo=UTC)
    assert floor_time(T, BucketSize.DAY) == datetime(2026, 3, 14, tzinfo=UTC)
    assert ceil_time(T, BucketSize.MINUTE) == datetime(2026, 3, 14, 15, 10, tzinfo=UTC)
    assert ceil_time(T, BucketSize.DAY) == datetime(2026, 3, 15, tzinfo=UTC)
    aligned = datetime(2026, 3, 14, tzinfo=UTC)
    assert ceil_time(aligned, BucketSize.DAY) == aligned
    # Other time zones are normalised to UTC.
    cet = T.astimezone(__import__("zoneinfo").ZoneInfo("Europe/Berlin"))
    assert floor_time(cet, BucketSize.DAY) == datetime(2026, 3, 14, tzinfo=UTC)


def test_bucket_starts() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    hours = bucket_starts(start, start + timedelta(hours=3), BucketSize.HOUR)
    assert hours == [start + timedelta(hours=h) for h in range(3)]
    assert bucket_starts(start, start, BucketSize.MINUTE) == []
    assert len(bucket_starts(start, start + timedelta(days=1), BucketSize.MINUTE)) == 1440


def test_check_range() -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert check_range(start, start + timedelta(hours=1)) == (start, start + timedelta(hours=1))
    with pytest.raises(InvalidRange) as caught:
        check_range(start, start)
    assert caught.value.field_violations[0].field == "end_time"
    with pytest.raises(InvalidRange):
        check_range(start, start + timedelta(hours=25), max_range=BucketSize.MINUTE.max_range)
    check_range(start, start + timedelta(days=31), max_range=BucketSize.HOUR.max_range)
    with pytest.raises(InvalidRange) as caught:
        check_range(datetime(1, 1, 1, tzinfo=UTC), start)
    assert caught.value.reason == "INVALID_RANGE"


def test_order_event_checks() -> None:
    with pytest.raises(InvalidEvent, match="currency"):
        _paid("o-1", T, currency="eur")
    with pytest.raises(InvalidEvent, match="currency"):
        _paid("o-1", T, currency="sales.EUR")
    with pytest.raises(InvalidEvent, match="order_id"):
        OrderEvent(OrderEventKind.PLACED, "", T, T)
    with pytest.raises(InvalidEvent, match="out of range"):
        OrderEvent(OrderEventKind.PLACED, "o-1", datetime(1900, 1, 1, tzinfo=UTC), T)
    with pytest.raises(InvalidEvent, match="quantity"):
        OrderEvent(OrderEventKind.PAID, "o", T, T, currency="EUR", lines=(SaleLine("MUG-1", 0, 1),))
    with pytest.raises(InvalidEvent, match="sku"):
        OrderEvent(OrderEventKind.PAID, "o", T, T, currency="EUR", lines=(SaleLine("$bad", 1, 1),))
    # A cancellation before payment needs no currency.
    OrderEvent(OrderEventKind.CANCELLED, "o", T, T, after_payment=False)
    with pytest.raises(InvalidEvent):
        OrderEvent(OrderEventKind.CANCELLED, "o", T, T, after_payment=True, currency="")


def test_fact_document() -> None:
    fact = fact_document(_paid("o-1", T))
    assert fact["kind"] == "OrderPaid"
    assert fact["t"] == T
    assert (fact["currency"], fact["amount"], fact["units"]) == ("EUR", 2500, 4)
    # Lines of one SKU are merged, sorted by SKU.
    assert fact["lines"] == [
        {"sku": "MUG-1", "units": 3, "revenue": 1000},
        {"sku": "TEA-2", "units": 1, "revenue": 500},
    ]
    refund = fact_document(
        OrderEvent(
            OrderEventKind.CANCELLED, "o", T, T, currency="USD", amount=900, after_payment=True
        )
    )
    assert (refund["after_payment"], refund["currency"], refund["amount"]) == (True, "USD", 900)
    unpaid = fact_document(OrderEvent(OrderEventKind.CANCELLED, "o", T, T, currency="USD"))
    assert "amount" not in unpaid
    assert fact_document(UserRegistered("u-1", T)) == {"kind": "UserRegistered", "t": T}


def test_fold_sales_buckets_and_totals() -> None:
    hour = datetime(2026, 3, 14, 15, tzinfo=UTC)
    facts = [
        fact_document(OrderEvent(OrderEventKind.PLACED, "o-1", hour, hour)),
        fact_document(_paid("o-1", hour + timedelta(minutes=2))),
        fact_document(_paid("o-2", hour + timedelta(minutes=2, seconds=30), currency="USD")),
        fact_document(
            OrderEvent(
                OrderEventKind.CANCELLED,
                "o-2",
                hour + timedelta(minutes=4),
                hour,
                currency="USD",
                amount=2500,
                after_payment=True,
            )
        ),
        fact_document(UserRegistered("u-1", hour + timedelta(minutes=4))),
        # Outside the range: ignored.
        fact_document(_paid("o-3", hour + timedelta(minutes=5))),
        fact_document(_paid("o-4", hour - timedelta(seconds=1))),
    ]
    summary = fold_sales(facts, size=BucketSize.MINUTE, start=hour, end=hour + timedelta(minutes=5))
    assert [b.start for b in summary.buckets] == [hour + timedelta(minutes=m) for m in range(5)]
    first, _, paid, _, cancelled = summary.buckets
    assert first.orders_placed == 1
    assert first.sales == ()
    assert paid.orders_paid == 2
    assert [(s.currency, s.revenue, s.units, s.orders_paid) for s in paid.sales] == [
        ("EUR", 2500, 4, 1),
        ("USD", 2500, 4, 1),
    ]
    assert (cancelled.orders_cancelled, cancelled.new_users) == (1, 1)
    assert [(s.currency, s.refunds, s.revenue) for s in cancelled.sales] == [("USD", 2500, 0)]
    total = summary.total
    assert total.start == hour
    assert (total.orders_placed, total.orders_paid, total.orders_cancelled) == (1, 2, 1)
    assert [(s.currency, s.revenue, s.refunds) for s in total.sales] == [
        ("EUR", 2500, 0),
        ("USD", 2500, 2500),
    ]
    only_usd = fold_sales(
        facts, size=BucketSize.HOUR, start=hour, end=hour + timedelta(hours=1), currency="USD"
    )
    assert [s.currency for s in only_usd.total.sales] == ["USD"]
    assert only_usd.total.orders_paid == 3  # counters are not filtered by currency


def test_simulated_stream_matches_the_independent_oracle_in_any_order() -> None:
    published, expected = simulate(150, users=10, seed=3)
    facts = []
    for item in published:
        event = to_domain_event(item.envelope)
        if isinstance(event, OrderEvent | UserRegistered):
            facts.append(fact_document(event))
    assert expected.first_time is not None
    assert expected.last_time is not None
    start = floor_time(expected.first_time, BucketSize.DAY)
    end = start + timedelta(days=2)
    results = []
    for seed in range(3):
        random.Random(seed).shuffle(facts)
        results.append(fold_sales(facts, size=BucketSize.HOUR, start=start, end=end))
    assert results[0] == results[1] == results[2]
    total = results[0].total
    assert (total.orders_placed, total.orders_paid, total.orders_cancelled) == (
        expected.placed,
        expected.paid,
        expected.cancelled,
    )
    assert (total.orders_fulfilled, total.orders_failed, total.new_users) == (
        expected.fulfilled,
        expected.failed,
        expected.new_users,
    )
    assert {s.currency: s.revenue for s in total.sales} == expected.revenue
    assert {s.currency: s.units for s in total.sales} == expected.units
    assert {s.currency: s.refunds for s in total.sales if s.refunds} == expected.refunds
    funnel = fold_funnel(facts)
    assert (funnel.placed, funnel.paid, funnel.fulfilled) == (
        expected.placed,
        expected.paid,
        expected.fulfilled,
    )
    assert (funnel.cancelled, funnel.cancelled_after_payment, funnel.failed) == (
        expected.cancelled,
        expected.cancelled_after_payment,
        expected.failed,
    )


def test_fold_funnel_counts_cancellations_after_payment() -> None:
    facts = [
        {"kind": "OrderPlaced"},
        {"kind": "OrderPaid"},
        {"kind": "OrderCancelled", "after_payment": True},
        {"kind": "OrderCancelled", "after_payment": False},
        {"kind": "OrderFailed"},
        {"kind": "UserRegistered"},
    ]
    funnel = fold_funnel(facts)
    assert (funnel.placed, funnel.paid, funnel.cancelled) == (1, 1, 2)
    assert (funnel.cancelled_after_payment, funnel.failed, funnel.fulfilled) == (1, 1, 0)


def test_rank_products() -> None:
    rows = [
        ProductRow("B-1", "EUR", 5, 500),
        ProductRow("A-1", "EUR", 3, 900),
        ProductRow("A-1", "USD", 2, 100),
        ProductRow("C-1", "USD", 5, 50),
    ]
    by_units = rank_products(rows, rank_by=RankBy.UNITS)
    assert [(p.rank, p.sku, p.units) for p in by_units] == [
        (1, "A-1", 5),  # tie at 5 units: SKU order
        (2, "B-1", 5),
        (3, "C-1", 5),
    ]
    assert by_units[0].revenue == (("EUR", 900), ("USD", 100))
    by_revenue = rank_products(rows, rank_by=RankBy.REVENUE, currency="EUR", limit=1)
    assert [(p.sku, p.units, p.revenue) for p in by_revenue] == [("A-1", 3, (("EUR", 900),))]
    usd_units = rank_products(rows, rank_by=RankBy.UNITS, currency="USD")
    assert [(p.sku, p.units) for p in usd_units] == [("C-1", 5), ("A-1", 2)]
    with pytest.raises(CurrencyRequired):
        rank_products(rows, rank_by=RankBy.REVENUE)
    many = [ProductRow(f"S-{i:02d}", "EUR", i, i) for i in range(30)]
    assert len(rank_products(many, rank_by=RankBy.UNITS)) == 10


def test_freshness() -> None:
    older, newer = T - timedelta(minutes=5), T
    fresh = freshness(
        [("orders", 1, 5, 9), ("auth", 0, 3, 3), ("orders", 0, 10, 8)],
        [
            PartitionProgress("orders", 1, newest_event_time=older, last_applied_time=newer),
            PartitionProgress("auth", 0, newest_event_time=newer, last_applied_time=older),
        ],
    )
    assert [(p.topic, p.partition, p.lag) for p in fresh.partitions] == [
        ("auth", 0, 0),
        ("orders", 0, 0),  # never negative
        ("orders", 1, 4),
    ]
    assert fresh.total_lag == 4
    assert (fresh.newest_event_time, fresh.last_applied_time) == (newer, newer)
    assert fresh.partitions[1].newest_event_time is None
    empty = freshness([], [])
    assert (empty.newest_event_time, empty.total_lag) == (None, 0)
