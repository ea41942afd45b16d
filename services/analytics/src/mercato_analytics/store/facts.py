"""The analytics database: exactly-once facts, per-partition progress, and the queries (see
the package docstring for the collections and why one insert is the whole effect)."""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from enum import Enum
from typing import Any

from bson import Int64
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from mercato_analytics.domain import (
    BucketSize,
    DomainEvent,
    EventOrigin,
    PartitionProgress,
    ProgressMarks,
    fact_document,
    floor_time,
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
from mercato_analytics.store.mongo import (
    WRITES_PER_COMMAND,
    bulk_write_in_chunks,
    gather_reads,
    int64_document,
    translated,
)
from mercato_analytics.store.rollups import (
    DIRTY,
    LEASES,
    ROLLUP_INDEXES,
    ROLLUPS,
    RollupStore,
)
from mercato_common.clock import utcnow
from mercato_common.mongo import DUPLICATE_KEY, IndexSpec, ensure_indexes

__all__ = ["COLLECTIONS", "FACTS", "INDEXES", "PARTITIONS", "AnalyticsStore", "ApplyOutcome"]

log = logging.getLogger("mercato_analytics.store")

# The minute and the hour of a fact's own time and of its order's placement: what the roll-ups
# and the queries select facts by. Equality, because FerretDB serves an equality from
# PostgreSQL (an index scan with the local build's GIN twins) but filters a range itself,
# decoding every document; the hour lets the roll-up job read many dirty minutes of one hour at
# once.
MINUTE, HOUR = "m", "h"
PLACE_MINUTE, PLACE_HOUR = "pm", "ph"
# Minutes of one hour read one by one up to this many; more, and the hour is read whole.
_MINUTES_AT_MOST = 6

FACTS = "facts"
PARTITIONS = "partitions"
COLLECTIONS = (FACTS, PARTITIONS, *ROLLUPS.values(), DIRTY, LEASES)

INDEXES: Mapping[str, list[IndexSpec]] = {
    FACTS: [
        IndexSpec.of("by_time", F_TIME, F_KIND),
        IndexSpec.of("by_place_time", F_PLACE_TIME),
        IndexSpec.of("by_minute", MINUTE),
        IndexSpec.of("by_place_minute", PLACE_MINUTE),
        IndexSpec.of("by_hour", HOUR),
        IndexSpec.of("by_place_hour", PLACE_HOUR),
    ],
    **ROLLUP_INDEXES,
}

# What sales and products read of a fact (by its own time), and what the funnel reads (by its
# order's placement time).
_TIMED_FIELDS = {"_id": 0, F_KIND: 1, F_TIME: 1, F_CURRENCY: 1, F_AMOUNT: 1, F_UNITS: 1}
_TIMED_FIELDS.update({F_AFTER_PAYMENT: 1, F_LINES: 1})
_PLACED_FIELDS = {"_id": 0, F_KIND: 1, F_PLACE_TIME: 1, F_AFTER_PAYMENT: 1}


def _time_keys(fact: Mapping[str, Any]) -> dict[str, datetime]:
    """The minute and hour keys of a fact (see :data:`MINUTE`)."""
    keys = {
        MINUTE: floor_time(fact[F_TIME], BucketSize.MINUTE),
        HOUR: floor_time(fact[F_TIME], BucketSize.HOUR),
    }
    if fact.get(F_PLACE_TIME) is not None:
        keys[PLACE_MINUTE] = floor_time(fact[F_PLACE_TIME], BucketSize.MINUTE)
        keys[PLACE_HOUR] = floor_time(fact[F_PLACE_TIME], BucketSize.HOUR)
    return keys


class ApplyOutcome(Enum):
    APPLIED = "applied"  # the fact was inserted: the event counts from now on
    DUPLICATE = "duplicate"  # the event's fact existed already: nothing changed


class AnalyticsStore:
    """Facts and progress of one database."""

    def __init__(
        self,
        db: AsyncDatabase[Any],
        *,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.db = db
        self.facts: AsyncCollection[Any] = db[FACTS]
        self.partitions: AsyncCollection[Any] = db[PARTITIONS]
        self.rollups = RollupStore(db)
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

    async def apply(self, origin: EventOrigin, event: DomainEvent) -> ApplyOutcome:
        """Insert the event's fact unless it exists: the effect, exactly once (module doc)."""
        async with translated():
            try:
                await self.facts.insert_one(self._fact(origin, event))
            except DuplicateKeyError:
                return ApplyOutcome.DUPLICATE
        return ApplyOutcome.APPLIED

    async def apply_many(
        self, events: Sequence[tuple[EventOrigin, DomainEvent]]
    ) -> list[ApplyOutcome | None]:
        """:meth:`apply` for many events in unordered bulk inserts of at most
        :data:`WRITES_PER_COMMAND` (one round trip each instead of one per event). The outcome
        of each event in order; ``None`` for one whose insert failed for another reason than
        its duplicate key (left to :meth:`apply`, which raises it). A transient failure raises
        :class:`StoreUnavailable`; facts already inserted by then stay, and count as
        duplicates when applied again."""
        facts = [self._fact(origin, event) for origin, event in events]
        outcomes: list[ApplyOutcome | None] = [ApplyOutcome.APPLIED] * len(facts)
        for start in range(0, len(facts), WRITES_PER_COMMAND):
            async with translated():
                try:
                    await self.facts.insert_many(
                        facts[start : start + WRITES_PER_COMMAND], ordered=False
                    )
                except BulkWriteError as exc:
                    for error in exc.details.get("writeErrors", ()):
                        duplicate = error.get("code") == DUPLICATE_KEY
                        outcomes[start + error["index"]] = (
                            ApplyOutcome.DUPLICATE if duplicate else None
                        )
        return outcomes

    def _fact(self, origin: EventOrigin, event: DomainEvent) -> dict[str, Any]:
        """The fact document of an event: its id is the event's, what makes it exactly once."""
        doc = int64_document(fact_document(event))
        doc.update(_time_keys(doc))
        doc.update(
            _id=origin.event_id,
            type=origin.event_type,
            topic=origin.topic,
            partition=origin.partition,
            offset=Int64(origin.offset),
            event_time=origin.event_time,
            applied_at=self._clock(),
        )
        return doc

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

    # -- facts of ranges (queries and roll-ups) ---------------------------------------------

    async def facts_timed(self, minutes: Iterable[datetime]) -> list[Any]:
        """The facts whose own time is in one of ``minutes``: what sales and products read."""
        return await self._facts_of(MINUTE, HOUR, minutes, _TIMED_FIELDS)

    async def facts_placed(self, minutes: Iterable[datetime]) -> list[Any]:
        """The facts whose order was placed in one of ``minutes``: what the funnel reads."""
        return await self._facts_of(PLACE_MINUTE, PLACE_HOUR, minutes, _PLACED_FIELDS)

    async def _facts_of(
        self,
        minute_key: str,
        hour_key: str,
        minutes: Iterable[datetime],
        fields: Mapping[str, int],
    ) -> list[Any]:
        wanted = set(minutes)
        per_hour: dict[datetime, list[datetime]] = defaultdict(list)
        for minute in sorted(wanted):
            per_hour[floor_time(minute, BucketSize.HOUR)].append(minute)
        queries: list[dict[str, datetime]] = []
        for hour, of_hour in per_hour.items():
            if len(of_hour) > _MINUTES_AT_MOST:
                queries.append({hour_key: hour})
            else:
                queries.extend({minute_key: minute} for minute in of_hour)
        projection = {**fields, minute_key: 1}

        async def one(query: dict[str, datetime]) -> list[Any]:
            async with translated():
                return await self.facts.find(query, projection).to_list()

        found = await gather_reads(one, queries)
        return [fact for facts in found for fact in facts if fact[minute_key] in wanted]

    async def facts_without_minutes(self) -> list[Any]:
        """Facts stored before facts carried their minutes, read at once: a cursor held open
        on FerretDB while the same collection is written stalls its PostgreSQL pool (seen)."""
        async with translated():
            return await self.facts.find(
                {MINUTE: {"$exists": False}}, {F_TIME: 1, F_PLACE_TIME: 1}
            ).to_list()

    async def has_facts(self) -> bool:
        async with translated():
            return await self.facts.find_one({}, {"_id": 1}) is not None

    async def set_minutes(self, facts: Sequence[Mapping[str, Any]]) -> None:
        ops = [UpdateOne({"_id": fact["_id"]}, {"$set": _time_keys(fact)}) for fact in facts]
        await bulk_write_in_chunks(self.facts, ops)

    async def facts_snapshot(self) -> list[dict[str, Any]]:
        """Every fact, sorted by id, without when and from which record it was applied (which
        copy of a duplicated event comes first may differ between runs): what a rebuild must
        reproduce exactly."""
        hidden = {"applied_at": 0, "topic": 0, "partition": 0, "offset": 0}
        hidden.update(dict.fromkeys((MINUTE, HOUR, PLACE_MINUTE, PLACE_HOUR), 0))
        async with translated():
            docs = await self.facts.find({}, hidden).to_list()
        return sorted(docs, key=lambda doc: str(doc["_id"]))

    async def count_facts(self) -> int:
        async with translated():
            return int(await self.facts.count_documents({}))
