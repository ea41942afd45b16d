# ruff: noqa: N802  (method names are the RPC names of the contract)
"""The gRPC servicer of mercato.analytics.v1.AnalyticsService: request → query → response.

Request shapes (required fields, ranges, CEL rules) are validated by the protovalidate
interceptor and access (``analytics:read``) by the identity interceptor before a handler runs;
``convert`` turns fields into domain values (None for an unset range end or bucket) and the use
cases (``service.Queries``) apply the contract's defaults, check the ranges again and round them
to whole buckets as the contract says.
"""

from __future__ import annotations

from dataclasses import dataclass

from mercato.analytics.v1 import analytics_pb2, analytics_pb2_grpc
from mercato_analytics.convert import (
    bucket_size,
    freshness_to_proto,
    funnel_to_proto,
    rank_by,
    requested_range,
    sales_bucket_to_proto,
    top_products_to_proto,
)
from mercato_analytics.service import Queries
from mercato_common.grpc_types import ServicerContext as Context

__all__ = ["SERVICE_NAME", "AnalyticsServicer"]

SERVICE_NAME = "mercato.analytics.v1.AnalyticsService"


@dataclass(eq=False)
class AnalyticsServicer(analytics_pb2_grpc.AnalyticsServiceServicer):
    queries: Queries

    async def GetSalesSummary(
        self, request: analytics_pb2.GetSalesSummaryRequest, context: Context
    ) -> analytics_pb2.GetSalesSummaryResponse:
        size = bucket_size(request.bucket)
        summary = await self.queries.sales_summary(
            size, *requested_range(request), currency=request.currency_code
        )
        return analytics_pb2.GetSalesSummaryResponse(
            buckets=[sales_bucket_to_proto(bucket) for bucket in summary.buckets],
            total=sales_bucket_to_proto(summary.total),
        )

    async def ListTopProducts(
        self, request: analytics_pb2.ListTopProductsRequest, context: Context
    ) -> analytics_pb2.ListTopProductsResponse:
        ranking = rank_by(request.rank_by)
        products = await self.queries.top_products(
            ranking, *requested_range(request), currency=request.currency_code, limit=request.limit
        )
        return top_products_to_proto(products)

    async def GetFunnel(
        self, request: analytics_pb2.GetFunnelRequest, context: Context
    ) -> analytics_pb2.GetFunnelResponse:
        return funnel_to_proto(await self.queries.funnel(*requested_range(request)))

    async def GetFreshness(
        self, request: analytics_pb2.GetFreshnessRequest, context: Context
    ) -> analytics_pb2.GetFreshnessResponse:
        return freshness_to_proto(await self.queries.freshness())
