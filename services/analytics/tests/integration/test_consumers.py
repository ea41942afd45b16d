"""Exactly-once effect, bursts, dead-lettering and out-of-order events on the real stack."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mercato.analytics.v1 import analytics_pb2
from mercato.orders.events.v1 import events_pb2 as order_events
from mercato.type.v1 import money_pb2
from mercato_analytics import samples
from mercato_analytics.samples import Line
from mercato_common.kafka import headers_to_map, new_envelope

pytestmark = pytest.mark.integration

DAY = analytics_pb2.BUCKET_DAY
HOUR = analytics_pb2.BUCKET_HOUR
MINUTE = analytics_pb2.BUCKET_MINUTE


def _day(when: datetime) -> datetime:
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


def _metric(analytics: Any, name: str, **labels: str) -> float:
    registry = analytics.app.metrics.registry  # the test's own registry
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_same_event_twice_counts_once(harness) -> None:
    analytics = await harness.make()
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    lines = [Line("MUG-1", 2, 1250)]
    paid = samples.order_paid(
        "0b7b5a2e-0000-4000-8000-000000000001",
        user_id="u-1",
        lines=lines,
        currency="EUR",
        place_time=when - timedelta(minutes=2),
        pay_time=when,
    )
    # Twice in a row on its partition, then once more on another partition (a producer or relay
    # retry); then again after it was applied.
    await harness.publisher.send("orders", paid)
    await harness.publisher.send("orders", paid)
    await harness.publisher.send("orders", paid, partition=5)
    await harness.wait_caught_up()
    await harness.publisher.send("orders", paid)
    await harness.wait_caught_up()

    window = (_day(when), _day(when) + timedelta(days=1))
    total = (await analytics.summary(*window, DAY)).total
    assert total.orders_paid == 1
    assert [(s.revenue.amount_minor, s.units, s.orders_paid) for s in total.sales] == [(2500, 2, 1)]
    assert (await analytics.funnel(*window)).paid == 1
    assert await analytics.app.store.count_facts() == 1
    applied = _metric(
        analytics, "mercato_analytics_events_total", type="OrderPaid", outcome="applied"
    )
    duplicates = _metric(
        analytics, "mercato_analytics_events_total", type="OrderPaid", outcome="duplicate"
    )
    assert (applied, duplicates) == (1, 3)

    # Redelivery of everything (as after a crash before the commit): still counted once.
    await harness.stop(analytics)
    await harness.reset_group()
    again = await harness.make()
    await harness.wait_caught_up()
    assert (await again.summary(*window, DAY)).total.orders_paid == 1
    assert await again.app.store.count_facts() == 1


async def test_burst_of_1000_order_events_gives_exact_totals(harness) -> None:
    published, expected = samples.simulate(400, users=25, seed=11, catalog_events=False)
    order_events_count = sum(1 for item in published if item.source == "orders")
    assert order_events_count >= 1000
    analytics = await harness.make()
    store = analytics.app.store
    calls = {"apply": 0, "apply_many": 0, "in_bulk": 0}
    real_apply, real_apply_many = store.apply, store.apply_many

    async def counted_apply(origin: Any, event: Any) -> Any:
        calls["apply"] += 1
        return await real_apply(origin, event)

    async def counted_apply_many(events: Any) -> Any:
        calls["apply_many"] += 1
        calls["in_bulk"] += len(events)
        return await real_apply_many(events)

    store.apply = counted_apply  # type: ignore[method-assign]
    store.apply_many = counted_apply_many  # type: ignore[method-assign]
    await harness.publisher.send_all(published)
    await harness.wait_caught_up()
    # The facts went in bulk (several events per insert), not one insert per event.
    assert calls["in_bulk"] >= order_events_count
    assert calls["apply"] <= order_events_count // 10
    assert calls["apply_many"] * 2 <= calls["in_bulk"]

    assert expected.first_time is not None
    start = _day(expected.first_time)
    end = start + timedelta(days=2)
    by_day = await analytics.summary(start, end, DAY)
    harness.assert_totals(by_day.total, expected)
    assert len(by_day.buckets) == 2
    # Hour buckets add up to the same totals.
    by_hour = await analytics.summary(start, end, HOUR)
    assert len(by_hour.buckets) == 48
    assert sum(b.orders_placed for b in by_hour.buckets) == expected.placed
    assert sum(b.orders_paid for b in by_hour.buckets) == expected.paid
    revenue: dict[str, int] = {}
    for bucket in by_hour.buckets:
        for sales in bucket.sales:
            code = sales.revenue.currency_code
            revenue[code] = revenue.get(code, 0) + sales.revenue.amount_minor
    assert revenue == dict(expected.revenue)
    harness.assert_totals(by_hour.total, expected)

    funnel = await analytics.funnel(start, end)
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
    top = await analytics.top(start, end, analytics_pb2.RANK_BY_UNITS, limit=100)
    assert {p.sku: p.units for p in top.products} == dict(expected.sku_units)
    assert [p.rank for p in top.products] == list(range(1, len(top.products) + 1))
    units = [p.units for p in top.products]
    assert units == sorted(units, reverse=True)
    by_revenue = await analytics.top(start, end, analytics_pb2.RANK_BY_REVENUE, currency="USD")
    expected_usd = sorted(
        ((sku, amount) for (sku, code), amount in expected.sku_revenue.items() if code == "USD"),
        key=lambda item: (-item[1], item[0]),
    )[:10]
    assert [(p.sku, p.revenue[0].amount_minor) for p in by_revenue.products] == expected_usd


def _bad_paid() -> Any:
    message = order_events.OrderPaid(
        order_id="o-bad",
        user_id="u-1",
        amount=money_pb2.Money(currency_code="euro", amount_minor=100),
    )
    message.place_time.FromDatetime(datetime.now(UTC))
    message.pay_time.FromDatetime(datetime.now(UTC))
    return new_envelope(message, source="orders", subject="o-bad")


async def test_malformed_messages_are_dead_lettered_and_later_events_apply(harness) -> None:
    analytics = await harness.make(max_attempts=2)
    store = analytics.app.store
    poison = samples.user_registered("u-poison", register_time=datetime.now(UTC))
    real_apply = store.apply

    async def flaky_apply(origin: Any, event: Any) -> Any:
        # One event that fails every attempt with an unexpected error (not a store outage).
        if origin.event_id == poison.id:
            raise RuntimeError("cannot apply this one")
        return await real_apply(origin, event)

    real_apply_many = store.apply_many

    async def flaky_apply_many(events: Any) -> Any:
        # The batch insert fails the same event as a write error of its own, as the store
        # reports one that is not a duplicate: left to its own apply.
        others = [(origin, event) for origin, event in events if origin.event_id != poison.id]
        outcomes = iter(await real_apply_many(others))
        return [None if o.event_id == poison.id else next(outcomes) for o, _ in events]

    store.apply = flaky_apply  # type: ignore[method-assign]
    store.apply_many = flaky_apply_many  # type: ignore[method-assign]
    when = datetime.now(UTC) - timedelta(minutes=5)
    await harness.publisher.send("orders", b"\x00\x01 not an envelope")
    await harness.publisher.send("orders", _bad_paid())
    await harness.publisher.send("auth", poison)
    unknown = new_envelope(money_pb2.Money(currency_code="EUR"), source="orders", subject="x")
    await harness.publisher.send("orders", unknown)  # unknown type: skipped, not parked
    good = [
        samples.order_placed(
            "o-1", user_id="u", lines=[Line("A-1", 1, 100)], currency="EUR", place_time=when
        ),
        samples.user_registered("u-2", register_time=when),
    ]
    for envelope in good:
        await harness.publisher.send("orders" if envelope.source == "orders" else "auth", envelope)
    await harness.wait_caught_up()

    parked = await harness.read_dlq(3)
    assert len(parked) == 3
    by_error = {headers_to_map(r.headers)["dlq_error_type"]: r for r in parked}
    undecodable = by_error["mercato_common.kafka.envelope.UndecodableMessageError"]
    assert undecodable.value == b"\x00\x01 not an envelope"
    assert headers_to_map(undecodable.headers)["dlq_original_topic"] == harness.env.orders
    invalid = headers_to_map(by_error["mercato_common.kafka.consumer.PermanentError"].headers)
    assert "ISO 4217" in invalid["dlq_error_message"]
    assert invalid["dlq_attempts"] == "1"
    failing = headers_to_map(by_error["builtins.RuntimeError"].headers)
    assert (failing["dlq_attempts"], failing["dlq_original_topic"]) == ("2", harness.env.auth)
    assert failing["ce_id"] == poison.id

    window = (_day(when), _day(when) + timedelta(days=2))
    total = (await analytics.summary(*window, DAY)).total
    assert (total.orders_placed, total.new_users) == (1, 1)
    assert _metric(analytics, "mercato_analytics_dead_letters_total", topic=harness.env.orders) == 2
    assert _metric(analytics, "mercato_analytics_dead_letters_total", topic=harness.env.auth) == 1
    assert (
        _metric(analytics, "mercato_analytics_events_total", type="other", outcome="unknown") == 1
    )
    failed = _metric(
        analytics, "mercato_analytics_events_total", type="UserRegistered", outcome="failed"
    )
    assert failed == 1


async def test_out_of_order_events_give_correct_totals(harness) -> None:
    analytics = await harness.make()
    # Yesterday mid-morning: placement, payment and refund all fall on one UTC day, whatever
    # the time the test runs at.
    placed_at = (datetime.now(UTC) - timedelta(days=1)).replace(
        hour=10, minute=0, second=10, microsecond=0
    )
    paid_at = placed_at + timedelta(minutes=3)
    refunded_at = paid_at + timedelta(hours=1)
    lines = [Line("KETTLE-1", 1, 3000), Line("MUG-1", 2, 500)]
    order = "7f1d5c1e-0000-4000-8000-00000000beef"
    kwargs: dict[str, Any] = {"user_id": "u-1", "place_time": placed_at}
    placed = samples.order_placed(order, lines=lines, currency="EUR", **kwargs)
    paid = samples.order_paid(order, lines=lines, currency="EUR", pay_time=paid_at, **kwargs)
    cancelled = samples.order_cancelled(
        order, total=4000, currency="EUR", after_payment=True, cancel_time=refunded_at, **kwargs
    )
    window = (_day(placed_at), _day(placed_at) + timedelta(days=1))

    # The refund first, on one partition; then the payment on another; the placement last.
    await harness.publisher.send("orders", cancelled, partition=4)
    await harness.wait_caught_up()
    funnel = await analytics.funnel(*window)
    assert (funnel.placed, funnel.paid, funnel.cancelled, funnel.cancelled_after_payment) == (
        0,
        0,
        1,
        1,
    )
    await harness.publisher.send("orders", paid, partition=1)
    await harness.publisher.send("orders", placed, partition=3)
    await harness.wait_caught_up()

    funnel = await analytics.funnel(*window)
    assert (funnel.placed, funnel.paid, funnel.cancelled, funnel.cancelled_after_payment) == (
        1,
        1,
        1,
        1,
    )
    by_hour = await analytics.summary(*window, HOUR)
    hours = {b.start_time.ToDatetime(tzinfo=UTC): b for b in by_hour.buckets}
    placed_hour = placed_at.replace(minute=0, second=0)
    assert hours[placed_hour].orders_placed == 1
    assert hours[paid_at.replace(minute=0, second=0)].orders_paid == 1
    refund_bucket = hours[refunded_at.replace(minute=0, second=0)]
    assert refund_bucket.orders_cancelled == 1
    assert [(s.refunds.amount_minor, s.revenue.amount_minor) for s in refund_bucket.sales] == [
        (4000, 0)
    ]
    total = by_hour.total
    assert (total.orders_placed, total.orders_paid, total.orders_cancelled) == (1, 1, 1)
    assert [(s.revenue.amount_minor, s.refunds.amount_minor, s.units) for s in total.sales] == [
        (4000, 4000, 3)
    ]
    # The minute summary puts the payment in its own minute.
    minutes = await analytics.summary(placed_at, placed_at + timedelta(minutes=10), MINUTE)
    assert [b.orders_paid for b in minutes.buckets].index(1) == 3
    top = await analytics.top(*window, analytics_pb2.RANK_BY_REVENUE, currency="EUR")
    assert [(p.sku, p.units, p.revenue[0].amount_minor) for p in top.products] == [
        ("KETTLE-1", 1, 3000),
        ("MUG-1", 2, 1000),
    ]
