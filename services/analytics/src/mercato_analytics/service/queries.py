"""The query use cases behind the RPCs: a requested range gets the contract's defaults for
what is unset, is checked and rounded to whole buckets as the contract says, then read from
the roll-ups and, for its dirty minutes, from the facts (``domain.rollups.plan_reads``), so a
query reads a few documents however long the history; freshness reads Kafka.

The defaults (mercato.analytics.v1): end_time now, start_time 7 days before end_time but never
longer than the bucket size allows (24 hours for minutes), bucket size a day. Only an inverted
or too-long range is refused, naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timedelta
from typing import Protocol

from mercato_analytics.domain import (
    MIN_TIME,
    BucketSize,
    Figures,
    Freshness,
    Funnel,
    Position,
    RankBy,
    SalesSummary,
    TopProduct,
    ceil_time,
    check_range,
    floor_time,
    fold_per_minute,
    freshness,
    merge_all,
    plan_reads,
    rank_products,
    summarize,
)
from mercato_analytics.store import AnalyticsStore
from mercato_common.clock import utcnow

__all__ = ["DEFAULT_BUCKET", "DEFAULT_RANGE", "PositionReader", "Queries", "default_range"]

DEFAULT_RANGE = timedelta(days=7)
DEFAULT_BUCKET = BucketSize.DAY


class PositionReader(Protocol):
    """Where the consumer group stands (:class:`mercato_analytics.positions.KafkaPositions`)."""

    async def read(self) -> list[Position]: ...


def default_range(
    start: datetime | None,
    end: datetime | None,
    *,
    now: datetime,
    longest: timedelta | None = None,
) -> tuple[datetime, datetime]:
    """The range with the contract's defaults for what is unset: ``end`` now, ``start``
    :data:`DEFAULT_RANGE` before ``end`` (at most ``longest``, never before 1970)."""
    if end is None:
        end = now
    if start is None:
        window = DEFAULT_RANGE if longest is None else min(DEFAULT_RANGE, longest)
        # Never before the earliest valid time: the caller did not send start_time, so an
        # error must not name it.
        start = max(end - window, MIN_TIME)
    return start, end


@dataclass(eq=False)
class Queries:
    store: AnalyticsStore
    positions: PositionReader
    _: KW_ONLY
    clock: Callable[[], datetime] = utcnow

    def _minutes(self, start: datetime | None, end: datetime | None) -> tuple[datetime, datetime]:
        """The range (defaults applied), checked and widened to whole minutes."""
        start, end = check_range(*default_range(start, end, now=self.clock()))
        return floor_time(start, BucketSize.MINUTE), ceil_time(end, BucketSize.MINUTE)

    async def sales_summary(
        self,
        size: BucketSize | None,
        start: datetime | None,
        end: datetime | None,
        *,
        currency: str = "",
    ) -> SalesSummary:
        """Every bucket of ``size`` over the range widened to whole buckets."""
        size = DEFAULT_BUCKET if size is None else size
        start, end = default_range(start, end, now=self.clock(), longest=size.max_range)
        start, end = check_range(start, end, max_range=size.max_range)
        start, end = floor_time(start, size), ceil_time(end, size)
        # By hour, the hours are read from their day roll-ups, which keep each hour's sales.
        by_hour = size is BucketSize.HOUR
        parts = await self._figures(
            start,
            end,
            coarsest=BucketSize.DAY if by_hour else size,
            placed=False,
            split_days=by_hour,
        )
        per_bucket: dict[datetime, Figures] = {}
        for part_start, figures in parts:
            per_bucket.setdefault(floor_time(part_start, size), Figures()).merge(figures)
        return summarize(
            {bucket: figures.sales for bucket, figures in per_bucket.items()},
            size=size,
            start=start,
            end=end,
            currency=currency,
        )

    async def top_products(
        self,
        rank_by: RankBy,
        start: datetime | None,
        end: datetime | None,
        *,
        currency: str = "",
        limit: int = 0,
    ) -> list[TopProduct]:
        start, end = self._minutes(start, end)
        parts = await self._figures(start, end, coarsest=BucketSize.DAY, placed=False)
        rows = merge_all([figures for _, figures in parts]).product_rows()
        return rank_products(rows, rank_by=rank_by, currency=currency, limit=limit)

    async def funnel(self, start: datetime | None, end: datetime | None) -> Funnel:
        start, end = self._minutes(start, end)
        parts = await self._figures(start, end, coarsest=BucketSize.DAY, timed=False)
        return merge_all([figures for _, figures in parts]).funnel_figures()

    async def _figures(
        self,
        start: datetime,
        end: datetime,
        *,
        coarsest: BucketSize,
        timed: bool = True,
        placed: bool = True,
        split_days: bool = False,
    ) -> list[tuple[datetime, Figures]]:
        """The figures covering ``[start, end)`` (whole minutes), each with its start: roll-ups
        no coarser than ``coarsest`` (days split into their hours' sales with ``split_days``),
        and per-minute folds of the dirty minutes' facts."""
        rollups = self.store.rollups
        plan = plan_reads(
            start, end, coarsest=coarsest, dirty=await rollups.dirty_minutes(start, end)
        )
        parts = await rollups.read(plan.rollups, split_days=split_days)
        if plan.raw:
            timed_facts = await self.store.facts_timed(plan.raw) if timed else []
            placed_facts = await self.store.facts_placed(plan.raw) if placed else []
            parts.extend(fold_per_minute(timed_facts, placed_facts).items())
        return parts

    async def freshness(self) -> Freshness:
        positions = await self.positions.read()
        return freshness(positions, await self.store.progress())
