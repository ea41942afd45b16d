"""The analytics database: exactly-once facts, per-partition progress, and the queries (see
the package docstring for the collections and why one insert is the whole effect)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from bson import Int64
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from mercato_analytics.domain import (
    BucketSize,
    DomainEvent,
    Funnel,
    OrderEventKind,
    PartitionProgress,
    ProgressMarks,
    RankBy,
    SalesSummary,
    TopProduct,
    fact_document,
    fold_funnel,
    fold_sales,
    product_rows,
    rank_products,
)
from mercato_analytics.domain.events import (
    F_AFTER_PAYMENT,
    F_AMOUNT,
    F_CURRENCY,
    F_KIND,
    F_LINES,
    F_PLACE_TIME,
    F_TIME,
    F_UNITS,
)
from mercato_analytics.store.mongo import int64_document, translated
from mercato_common.mongo import IndexSpec, ensure_indexes

__all__ = ["COLLECTIONS", "FACTS", "INDEXES", "PARTITIONS", "AnalyticsStore", "ApplyOutcome"]

log = logging.getLogger("mercato_analytics.store")

FACTS = "facts"
PARTITIONS = "partitions"
COLLECTIONS = (FACTS, PARTITIONS)

INDEXES: Mapping[str, list[IndexSpec]] = {
    FACTS: [
        IndexSpec.of("by_time", F_TIME, F_KIND),
        IndexSpec.of("by_place_time", F_PLACE_TIME),
    ],
}

# What the sales summary and the funnel read of a fact.
_SALES_FIELDS = {"_id": 0, F_KIND: 1, F_TIME: 1, F_CURRENCY: 1, F_AMOUNT: 1, F_UNITS: 1}
_SALES_FIELDS[F_AFTER_PAYMENT] = 1
_FUNNEL_FIELDS = {"_id": 0, F_KIND: 1, F_AFTER_PAYMENT: 1}


class ApplyOutcome(Enum):
    APPLIED = "applied"  # the fact was inserted: the event counts from now on
    DUPLICATE = "duplicate"  # the event's fact existed already: nothing changed


class AnalyticsStore:
    """Facts and progress of one database."""

    def __init__(
        self,
        db: AsyncDatabase[Any],
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.db = db
        self.facts: AsyncCollection[Any] = db[FACTS]
        self.partitions: AsyncCollection[Any] = db[PARTITIONS]
        self._clock = clock

    async def ensure_indexes(self) -> list[str]:
        """Create the missing indexes; the names of those created."""
        return await ensure_indexes(self.db, INDEXES)

    async def drop_all(self) -> None:
        """Drop every collection (rebuild); indexes must be ensured again afterwards."""
        async with translated():
            for name in COLLECTIONS:
                await self.db.drop_collection(name)

    # -- applying events -------------------------------------------------------------------

    async def apply(
        self,
        *,
        event_id: str,
        event: DomainEvent,
        event_type: str,
        event_time: datetime,
        topic: str,
        partition: int,
        offset: int,
    ) -> ApplyOutcome:
        """Insert the event's fact unless it exists: the effect, exactly once (module doc)."""
        doc = int64_document(fact_document(event))
        doc.update(
            _id=event_id,
            type=event_type,
            topic=topic,
            partition=partition,
            offset=Int64(offset),
            event_time=event_time,
            applied_at=self._clock(),
        )
        async with translated():
            try:
                await self.facts.insert_one(doc)
            except DuplicateKeyError:
                return ApplyOutcome.DUPLICATE
        return ApplyOutcome.APPLIED

    # -- progress --------------------------------------------------------------------------

    async def record_progress(self, marks: ProgressMarks) -> None:
        if not marks:
            return
        ops = [
            UpdateOne(
                {"_id": f"{topic}|{partition}"},
                {
                    "$max": {"newest_event_time": event_time, "last_applied_time": applied},
                    "$setOnInsert": {"topic": topic, "partition": partition},
                },
                upsert=True,
            )
            for (topic, partition), (event_time, applied) in sorted(marks.items())
        ]
        async with translated():
            await self.partitions.bulk_write(ops, ordered=True)

    async def progress(self) -> list[PartitionProgress]:
        async with translated():
            docs = await self.partitions.find({}).to_list()
        return [
            PartitionProgress(
                topic=doc["topic"],
                partition=int(doc["partition"]),
                newest_event_time=doc.get("newest_event_time"),
                last_applied_time=doc.get("last_applied_time"),
            )
            for doc in docs
        ]

    # -- queries ---------------------------------------------------------------------------

    async def sales_summary(
        self, *, size: BucketSize, start: datetime, end: datetime, currency: str = ""
    ) -> SalesSummary:
        """Every bucket of ``size`` over ``[start, end)`` (aligned), from the facts of the range."""
        async with translated():
            facts = await self.facts.find(
                {F_TIME: {"$gte": start, "$lt": end}}, _SALES_FIELDS
            ).to_list()
        return fold_sales(facts, size=size, start=start, end=end, currency=currency)

    async def funnel(self, *, start: datetime, end: datetime) -> Funnel:
        """The funnel of the orders placed in ``[start, end)``."""
        async with translated():
            facts = await self.facts.find(
                {F_PLACE_TIME: {"$gte": start, "$lt": end}}, _FUNNEL_FIELDS
            ).to_list()
        return fold_funnel(facts)

    async def top_products(
        self,
        *,
        start: datetime,
        end: datetime,
        rank_by: RankBy,
        currency: str = "",
        limit: int = 0,
    ) -> list[TopProduct]:
        """Products of the orders paid in ``[start, end)``, best first."""
        # Folded here rather than with $unwind/$group: FerretDB 1.24 drops the other fields of
        # an unwound document, so a group key of (line SKU, order currency) cannot be built there.
        match: dict[str, Any] = {
            F_TIME: {"$gte": start, "$lt": end},
            F_KIND: OrderEventKind.PAID.value,
        }
        if currency:
            match[F_CURRENCY] = currency
        async with translated():
            facts = await self.facts.find(match, {"_id": 0, F_CURRENCY: 1, F_LINES: 1}).to_list()
        return rank_products(product_rows(facts), rank_by=rank_by, currency=currency, limit=limit)

    async def facts_snapshot(self) -> list[dict[str, Any]]:
        """Every fact, sorted by id, without when and from which record it was applied (which
        copy of a duplicated event comes first may differ between runs): what a rebuild must
        reproduce exactly."""
        hidden = {"applied_at": 0, "topic": 0, "partition": 0, "offset": 0}
        async with translated():
            docs = await self.facts.find({}, hidden).to_list()
        return sorted(docs, key=lambda doc: str(doc["_id"]))

    async def count_facts(self) -> int:
        async with translated():
            return int(await self.facts.count_documents({}))
