# ruff: noqa: N802  (method names are the RPC names of the contract)
"""The gRPC servicer of mercato.analytics.v1.AnalyticsService: requests → store queries → messages.

Request shapes (required fields, ranges, CEL rules) are validated by the protovalidate
interceptor and access (``analytics:read``) by the identity interceptor before a handler runs;
the handlers convert fields into domain values (the domain checks the ranges again) and round
the range to whole buckets as the contract says.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from mercato.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from mercato.type.v1 import money_pb2
from mercato_analytics.domain import (
    BucketSize,
    Freshness,
    InvalidRange,
    RankBy,
    SalesBucket,
    ceil_time,
    check_range,
    floor_time,
    freshness,
)
from mercato_analytics.lag import Position
from mercato_analytics.store import AnalyticsStore
from mercato_common.errors import FieldViolation

if TYPE_CHECKING:
    Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
else:
    Context: TypeAlias = Any

__all__ = ["SERVICE_NAME", "AnalyticsServicer", "freshness_to_proto", "sales_bucket_to_proto"]

SERVICE_NAME = "mercato.analytics.v1.AnalyticsService"

_SIZES = {
    analytics_pb2.BUCKET_MINUTE: BucketSize.MINUTE,
    analytics_pb2.BUCKET_HOUR: BucketSize.HOUR,
    analytics_pb2.BUCKET_DAY: BucketSize.DAY,
}
_RANK_BY = {
    analytics_pb2.RANK_BY_UNITS: RankBy.UNITS,
    analytics_pb2.RANK_BY_REVENUE: RankBy.REVENUE,
}


class PositionReader(Protocol):
    async def read(self) -> list[Position]: ...


def _ts(when: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(when.astimezone(UTC))
    return ts


def _when(ts: Timestamp, name: str) -> datetime:
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError):
        raise InvalidRange(
            f"{name} is not a valid time",
            field_violations=[FieldViolation(name, "not a valid timestamp")],
        ) from None


def _range(request: Any) -> tuple[datetime, datetime]:
    return _when(request.start_time, "start_time"), _when(request.end_time, "end_time")


def _money(currency: str, amount: int) -> money_pb2.Money:
    return money_pb2.Money(currency_code=currency, amount_minor=amount)


def sales_bucket_to_proto(bucket: SalesBucket) -> analytics_pb2.SalesBucket:
    return analytics_pb2.SalesBucket(
        start_time=_ts(bucket.start),
        orders_placed=bucket.orders_placed,
        orders_paid=bucket.orders_paid,
        orders_cancelled=bucket.orders_cancelled,
        orders_fulfilled=bucket.orders_fulfilled,
        orders_failed=bucket.orders_failed,
        new_users=bucket.new_users,
        sales=[
            analytics_pb2.CurrencySales(
                revenue=_money(sales.currency, sales.revenue),
                refunds=_money(sales.currency, sales.refunds),
                units=sales.units,
                orders_paid=sales.orders_paid,
            )
            for sales in bucket.sales
        ],
    )


def freshness_to_proto(fresh: Freshness) -> analytics_pb2.GetFreshnessResponse:
    response = analytics_pb2.GetFreshnessResponse(total_lag=fresh.total_lag)
    if fresh.newest_event_time is not None:
        response.newest_event_time.CopyFrom(_ts(fresh.newest_event_time))
    if fresh.last_applied_time is not None:
        response.last_applied_time.CopyFrom(_ts(fresh.last_applied_time))
    for partition in fresh.partitions:
        entry = analytics_pb2.PartitionLag(
            topic=partition.topic,
            partition=partition.partition,
            committed_offset=partition.committed_offset,
            end_offset=partition.end_offset,
            lag=partition.lag,
        )
        if partition.newest_event_time is not None:
            entry.newest_event_time.CopyFrom(_ts(partition.newest_event_time))
        response.partitions.append(entry)
    return response


class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    def __init__(self, store: AnalyticsStore, positions: PositionReader) -> None:
        self._store = store
        self._positions = positions

    async def GetSalesSummary(
        self, request: analytics_pb2.GetSalesSummaryRequest, context: Context
    ) -> analytics_pb2.GetSalesSummaryResponse:
        size = _SIZES.get(request.bucket)
        if size is None:
            raise InvalidRange(
                "bucket is required",
                field_violations=[FieldViolation("bucket", "must be MINUTE, HOUR or DAY")],
            )
        start, end = check_range(*_range(request), max_range=size.max_range)
        summary = await self._store.sales_summary(
            size=size,
            start=floor_time(start, size),
            end=ceil_time(end, size),
            currency=request.currency_code,
        )
        return analytics_pb2.GetSalesSummaryResponse(
            buckets=[sales_bucket_to_proto(bucket) for bucket in summary.buckets],
            total=sales_bucket_to_proto(summary.total),
        )

    async def ListTopProducts(
        self, request: analytics_pb2.ListTopProductsRequest, context: Context
    ) -> analytics_pb2.ListTopProductsResponse:
        rank_by = _RANK_BY.get(request.rank_by)
        if rank_by is None:
            raise InvalidRange(
                "rank_by is required",
                field_violations=[FieldViolation("rank_by", "must be UNITS or REVENUE")],
            )
        start, end = check_range(*_range(request))
        products = await self._store.top_products(
            start=floor_time(start, BucketSize.MINUTE),
            end=ceil_time(end, BucketSize.MINUTE),
            rank_by=rank_by,
            currency=request.currency_code,
            limit=request.limit,
        )
        return analytics_pb2.ListTopProductsResponse(
            products=[
                analytics_pb2.TopProduct(
                    rank=product.rank,
                    sku=product.sku,
                    units=product.units,
                    revenue=[_money(code, amount) for code, amount in product.revenue],
                )
                for product in products
            ]
        )

    async def GetFunnel(
        self, request: analytics_pb2.GetFunnelRequest, context: Context
    ) -> analytics_pb2.GetFunnelResponse:
        start, end = check_range(*_range(request))
        funnel = await self._store.funnel(
            start=floor_time(start, BucketSize.MINUTE), end=ceil_time(end, BucketSize.MINUTE)
        )
        return analytics_pb2.GetFunnelResponse(
            placed=funnel.placed,
            paid=funnel.paid,
            fulfilled=funnel.fulfilled,
            cancelled=funnel.cancelled,
            cancelled_after_payment=funnel.cancelled_after_payment,
            failed=funnel.failed,
        )

    async def GetFreshness(
        self, request: analytics_pb2.GetFreshnessRequest, context: Context
    ) -> analytics_pb2.GetFreshnessResponse:
        positions = await self._positions.read()
        progress = await self._store.progress()
        return freshness_to_proto(freshness(positions, progress))
