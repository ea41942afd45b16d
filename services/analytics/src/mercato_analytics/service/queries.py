"""The query use cases behind the RPCs: a requested range is checked and rounded to whole
buckets as the contract says, then read from the store (and, for freshness, from Kafka)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from mercato_analytics.domain import (
    BucketSize,
    Freshness,
    Funnel,
    Position,
    RankBy,
    SalesSummary,
    TopProduct,
    ceil_time,
    check_range,
    floor_time,
    freshness,
)
from mercato_analytics.store import AnalyticsStore

__all__ = ["PositionReader", "Queries"]


class PositionReader(Protocol):
    """Where the consumer group stands (:class:`mercato_analytics.positions.KafkaPositions`)."""

    async def read(self) -> list[Position]: ...


def _minutes(start: datetime, end: datetime) -> tuple[datetime, datetime]:
    """A checked range widened to whole minutes."""
    start, end = check_range(start, end)
    return floor_time(start, BucketSize.MINUTE), ceil_time(end, BucketSize.MINUTE)


class Queries:
    def __init__(self, store: AnalyticsStore, positions: PositionReader) -> None:
        self._store = store
        self._positions = positions

    async def sales_summary(
        self, size: BucketSize, start: datetime, end: datetime, *, currency: str = ""
    ) -> SalesSummary:
        """Every bucket of ``size`` over the range widened to whole buckets."""
        start, end = check_range(start, end, max_range=size.max_range)
        return await self._store.sales_summary(
            size=size,
            start=floor_time(start, size),
            end=ceil_time(end, size),
            currency=currency,
        )

    async def top_products(
        self, rank_by: RankBy, start: datetime, end: datetime, *, currency: str = "", limit: int = 0
    ) -> list[TopProduct]:
        start, end = _minutes(start, end)
        return await self._store.top_products(
            start=start, end=end, rank_by=rank_by, currency=currency, limit=limit
        )

    async def funnel(self, start: datetime, end: datetime) -> Funnel:
        start, end = _minutes(start, end)
        return await self._store.funnel(start=start, end=end)

    async def freshness(self) -> Freshness:
        positions = await self._positions.read()
        return freshness(positions, await self._store.progress())
