"""The query RPCs through a real gRPC server: access, validation, buckets, freshness."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import grpc
import pytest

from mercato.analytics.v1 import analytics_pb2
from mercato_analytics import samples
from mercato_analytics.samples import Line
from mercato_common.rpc_errors import error_from_rpc

pytestmark = pytest.mark.integration

BASE = datetime(2026, 2, 3, 10, 0, tzinfo=UTC)


def _request(message, start: datetime, end: datetime, **fields):
    request = message(**fields)
    request.start_time.FromDatetime(start)
    request.end_time.FromDatetime(end)
    return request


async def _expect(call, code: grpc.StatusCode, reason: str | None = None) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    assert caught.value.code() == code, caught.value.details()
    if reason is not None:
        assert error_from_rpc(caught.value).reason == reason
    return caught.value


async def _seed(harness) -> None:
    order = "3c2f8a1e-0000-4000-8000-0000000000a1"
    lines = [Line("MUG-1", 3, 700), Line("TEA-9", 1, 450)]
    placed_at = BASE + timedelta(minutes=5, seconds=20)
    paid_at = BASE + timedelta(minutes=7, seconds=1)
    common = {"user_id": "u-1", "place_time": placed_at}
    await harness.publisher.send_all(
        [
            ("orders", samples.order_placed(order, lines=lines, currency="EUR", **common)),
            (
                "orders",
                samples.order_paid(order, lines=lines, currency="EUR", pay_time=paid_at, **common),
            ),
            (
                "orders",
                samples.order_paid(
                    "3c2f8a1e-0000-4000-8000-0000000000a2",
                    user_id="u-2",
                    lines=[Line("MUG-1", 1, 900)],
                    currency="USD",
                    place_time=placed_at,
                    pay_time=paid_at + timedelta(hours=2),
                ),
            ),
            ("auth", samples.user_registered("u-9", register_time=BASE + timedelta(minutes=1))),
            (
                "catalog",
                samples.stock_reserved(order, lines=lines, reserve_time=placed_at),
            ),
        ]
    )
    await harness.wait_caught_up()


async def test_access_and_validation(harness) -> None:
    analytics = await harness.make(consume=False)
    stub = analytics.stub
    request = _request(
        analytics_pb2.GetSalesSummaryRequest,
        BASE,
        BASE + timedelta(hours=1),
        bucket=analytics_pb2.BUCKET_MINUTE,
    )
    await _expect(stub.GetSalesSummary(request), grpc.StatusCode.UNAUTHENTICATED, "TOKEN_MISSING")
    await _expect(
        stub.GetSalesSummary(request, metadata=analytics.auth("orders:read")),
        grpc.StatusCode.PERMISSION_DENIED,
        "SCOPE_MISSING",
    )
    forged = [("authorization", "Bearer not-a-jwt")]
    await _expect(stub.GetSalesSummary(request, metadata=forged), grpc.StatusCode.UNAUTHENTICATED)
    await stub.GetSalesSummary(request, metadata=analytics.auth())

    backwards = _request(
        analytics_pb2.GetSalesSummaryRequest,
        BASE,
        BASE - timedelta(hours=1),
        bucket=analytics_pb2.BUCKET_HOUR,
    )
    await _expect(
        stub.GetSalesSummary(backwards, metadata=analytics.auth()), grpc.StatusCode.INVALID_ARGUMENT
    )
    too_long = _request(
        analytics_pb2.GetSalesSummaryRequest,
        BASE,
        BASE + timedelta(hours=25),
        bucket=analytics_pb2.BUCKET_MINUTE,
    )
    await _expect(
        stub.GetSalesSummary(too_long, metadata=analytics.auth()), grpc.StatusCode.INVALID_ARGUMENT
    )
    # Unset range ends and bucket take the contract's defaults (7 days ending now, by day).
    bare = await stub.GetSalesSummary(
        analytics_pb2.GetSalesSummaryRequest(), metadata=analytics.auth()
    )
    assert len(bare.buckets) in (7, 8)  # 7 days, widened to whole days
    assert bare.total.start_time == bare.buckets[0].start_time
    await stub.GetFunnel(analytics_pb2.GetFunnelRequest(), metadata=analytics.auth())
    await stub.ListTopProducts(
        analytics_pb2.ListTopProductsRequest(rank_by=analytics_pb2.RANK_BY_UNITS),
        metadata=analytics.auth(),
    )
    future_start = analytics_pb2.GetFunnelRequest()
    future_start.start_time.FromDatetime(datetime.now(UTC) + timedelta(days=1))
    error = await _expect(
        stub.GetFunnel(future_start, metadata=analytics.auth()),
        grpc.StatusCode.INVALID_ARGUMENT,
        "INVALID_RANGE",
    )
    assert [v.field for v in error_from_rpc(error).field_violations] == ["end_time"]
    revenue_without_currency = _request(
        analytics_pb2.ListTopProductsRequest,
        BASE,
        BASE + timedelta(hours=1),
        rank_by=analytics_pb2.RANK_BY_REVENUE,
    )
    await _expect(
        stub.ListTopProducts(revenue_without_currency, metadata=analytics.auth()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    bad_currency = _request(
        analytics_pb2.ListTopProductsRequest,
        BASE,
        BASE + timedelta(hours=1),
        rank_by=analytics_pb2.RANK_BY_UNITS,
        currency_code="eur",
    )
    error = await _expect(
        stub.ListTopProducts(bad_currency, metadata=analytics.auth()),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert any(v.field == "currency_code" for v in error_from_rpc(error).field_violations)


async def test_queries_round_ranges_and_fill_empty_buckets(harness) -> None:
    analytics = await harness.make()
    await _seed(harness)

    # Minute buckets: 10:03:30 is truncated to 10:03, 10:08:10 rounded up to 10:09.
    minutes = await analytics.summary(
        BASE + timedelta(minutes=3, seconds=30),
        BASE + timedelta(minutes=8, seconds=10),
        analytics_pb2.BUCKET_MINUTE,
    )
    starts = [b.start_time.ToDatetime(tzinfo=UTC) for b in minutes.buckets]
    assert starts == [BASE + timedelta(minutes=m) for m in range(3, 9)]
    assert minutes.total.start_time.ToDatetime(tzinfo=UTC) == BASE + timedelta(minutes=3)
    by_minute = {b.start_time.ToDatetime(tzinfo=UTC).minute: b for b in minutes.buckets}
    assert by_minute[5].orders_placed == 1  # the USD order was only paid here, not placed
    assert by_minute[7].orders_paid == 1
    assert [
        (s.revenue.currency_code, s.revenue.amount_minor, s.units) for s in by_minute[7].sales
    ] == [("EUR", 2550, 4)]
    assert by_minute[4].orders_placed == 0
    assert list(by_minute[4].sales) == []

    day = await analytics.summary(BASE, BASE + timedelta(hours=5), analytics_pb2.BUCKET_DAY)
    assert len(day.buckets) == 1
    total = day.total
    assert (total.orders_placed, total.orders_paid, total.new_users) == (1, 2, 1)
    assert [(s.revenue.currency_code, s.revenue.amount_minor) for s in total.sales] == [
        ("EUR", 2550),
        ("USD", 900),
    ]
    usd = await analytics.summary(
        BASE, BASE + timedelta(hours=5), analytics_pb2.BUCKET_HOUR, currency="USD"
    )
    assert [s.revenue.currency_code for s in usd.total.sales] == ["USD"]
    assert usd.total.orders_paid == 2  # counters are not filtered

    top = await analytics.top(BASE, BASE + timedelta(hours=5), analytics_pb2.RANK_BY_UNITS)
    assert [(p.rank, p.sku, p.units) for p in top.products] == [(1, "MUG-1", 4), (2, "TEA-9", 1)]
    assert [(m.currency_code, m.amount_minor) for m in top.products[0].revenue] == [
        ("EUR", 2100),
        ("USD", 900),
    ]
    # The window's end is rounded up to the minute: 10:07:00.5 includes the 10:07:01 payment.
    narrow = await analytics.top(
        BASE + timedelta(minutes=7),
        BASE + timedelta(minutes=7, milliseconds=500),
        analytics_pb2.RANK_BY_REVENUE,
        currency="EUR",
    )
    assert [p.sku for p in narrow.products] == ["MUG-1", "TEA-9"]

    funnel = await analytics.funnel(BASE + timedelta(minutes=5), BASE + timedelta(minutes=6))
    assert (funnel.placed, funnel.paid, funnel.fulfilled) == (1, 2, 0)

    fresh = await analytics.freshness()
    assert len(fresh.partitions) == 18  # 3 topics x 6 partitions
    assert fresh.total_lag == 0
    assert [(p.topic, p.partition) for p in fresh.partitions] == sorted(
        (p.topic, p.partition) for p in fresh.partitions
    )
    assert fresh.newest_event_time.ToDatetime(tzinfo=UTC) == BASE + timedelta(
        hours=2, minutes=7, seconds=1
    )
    assert fresh.last_applied_time.ToDatetime(tzinfo=UTC) > datetime.now(UTC) - timedelta(minutes=1)
    consumed = [p for p in fresh.partitions if p.end_offset > 0]
    assert consumed
    assert all(p.committed_offset == p.end_offset and p.lag == 0 for p in consumed)
    assert all(p.HasField("newest_event_time") for p in consumed)


async def test_freshness_reports_lag_when_consumers_are_behind(harness) -> None:
    queries = await harness.make(consume=False)
    await harness.publisher.send_all(
        [
            ("orders", samples.order_failed(f"o-{i}", user_id="u", place_time=BASE, fail_time=BASE))
            for i in range(7)
        ]
    )
    fresh = await queries.freshness()
    assert fresh.total_lag == 7
    assert sum(p.lag for p in fresh.partitions if p.topic == harness.env.orders) == 7
    assert not fresh.HasField("newest_event_time")
