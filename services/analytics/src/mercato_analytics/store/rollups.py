"""Roll-ups, dirty minutes and the roll-up lease (see ``mercato_analytics.domain.rollups``).

Collections
-----------
``rollups_minutes``, ``rollups_hours``, ``rollups_days``
    One document per bucket start of the level with the figures of that minute, hour or day:
    ``_id`` = ``rollup_id(level, start)``, ``level``, ``start``, ``parent`` (the id of the
    hour of a minute, the day of an hour, the month of a day) and ``f``, the figures as compact
    JSON bytes. Replaced whole by the roll-up job, never updated in place; a bucket without
    figures has no document. A day also holds ``h``, the sales figures of each of its hours
    with any (compact JSON bytes, by the hour's ISO start), so that sales by hour read one
    document a day instead of up to 24, for whole days and parts of days alike; a day written by
    an earlier version, without ``h``, is read by its hours instead.

    Read by ``_id`` or by ``parent``, both equalities: FerretDB serves an equality from
    PostgreSQL but filters a range itself over the whole collection, and it decodes one bytes
    field about seven times faster than the same figures as nested documents (measured: 60 roll-ups
    by parent in 7.5 ms against 50 ms). Each level has its own collection: a FerretDB without the
    local build's GIN twins answers even an equality with a scan of the whole collection, and
    then reading the hours of a day scans the hours only, not the minutes beside them.
``rollups``
    The single collection of all three levels of earlier versions: its minutes are marked dirty
    (so the job writes them, their hours and days into the collections above) and it is dropped
    (:meth:`RollupStore.move_single_collection`).
``dirty_minutes``
    One document per minute whose facts changed since its roll-up: ``minute``, ``touched`` (when
    last marked) and a random ``token`` that every mark replaces. The job removes a mark only if
    its token is still the one it read, so a mark written while it worked survives.
``leases``
    ``rollup``: which process runs the roll-up job, and until when (one job at a time);
    ``minutes-backfilled``: the facts of an older version were given their minutes.
"""

from __future__ import annotations

import json
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from bson import Binary
from pymongo import DeleteOne, ReplaceOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from mercato_analytics.domain import (
    BucketSize,
    SalesFigures,
    bucket_starts,
    ceil_time,
    floor_time,
)
from mercato_analytics.domain.rollups import Figures, Span, rollup_id
from mercato_analytics.store.mongo import bulk_write_in_chunks, gather_reads, translated
from mercato_common.mongo import IndexSpec

__all__ = [
    "DIRTY",
    "LEASES",
    "ROLLUPS",
    "ROLLUP_INDEXES",
    "SINGLE_COLLECTION",
    "DirtyMark",
    "RollupStore",
]

ROLLUPS: Mapping[BucketSize, str] = {
    BucketSize.MINUTE: "rollups_minutes",
    BucketSize.HOUR: "rollups_hours",
    BucketSize.DAY: "rollups_days",
}
SINGLE_COLLECTION = "rollups"
DIRTY = "dirty_minutes"
LEASES = "leases"

ROLLUP_INDEXES: Mapping[str, list[IndexSpec]] = {
    **{name: [IndexSpec.of("by_parent", "parent")] for name in ROLLUPS.values()},
    DIRTY: [IndexSpec.of("by_minute", "minute")],
}

_LEASE_ID = "rollup"

# Buckets of one parent read one by one up to this many; more, and the parent is read whole.
_BY_ID_AT_MOST = 4
# Buckets of one span read by their parents up to this many; more, and the level is read whole.
_BY_PARENT_AT_MOST = 1500


def _packed(document: Mapping[str, Any]) -> Binary:
    return Binary(json.dumps(document, separators=(",", ":")).encode())


def _parent(level: BucketSize, start: datetime) -> str:
    """The id of what contains a roll-up: the hour of a minute, the day of an hour, the month
    of a day."""
    if level is BucketSize.MINUTE:
        return rollup_id(BucketSize.HOUR, floor_time(start, BucketSize.HOUR))
    if level is BucketSize.HOUR:
        return rollup_id(BucketSize.DAY, floor_time(start, BucketSize.DAY))
    return f"month|{start:%Y-%m}"


# A mark as the job read it: the minute and the token to remove it by.
DirtyMark = tuple[datetime, str]


class RollupStore:
    def __init__(self, db: AsyncDatabase[Any]) -> None:
        self.rollups: Mapping[BucketSize, AsyncCollection[Any]] = {
            level: db[name] for level, name in ROLLUPS.items()
        }
        self._single: AsyncCollection[Any] = db[SINGLE_COLLECTION]
        self.dirty: AsyncCollection[Any] = db[DIRTY]
        self.leases: AsyncCollection[Any] = db[LEASES]

    # -- dirty minutes ---------------------------------------------------------------------

    async def mark_dirty(self, minutes: Iterable[datetime], *, now: datetime) -> None:
        # An update, else an insert, else (another process inserted meanwhile) the update again:
        # never an upsert, whose concurrent conflicts on a new minute stall FerretDB 1.24 (its
        # pool of PostgreSQL connections ran dry under them, seen in the e2e suite and a bench).
        for minute in sorted(minutes):
            key = minute.isoformat()
            fields = {"minute": minute, "touched": now, "token": uuid.uuid4().hex}
            async with translated():
                if (await self.dirty.update_one({"_id": key}, {"$set": fields})).matched_count:
                    continue
                try:
                    await self.dirty.insert_one({"_id": key, **fields})
                except DuplicateKeyError:
                    await self.dirty.update_one({"_id": key}, {"$set": fields})

    async def dirty_minutes(self, start: datetime, end: datetime) -> list[datetime]:
        """The dirty minutes in ``[start, end)``."""
        async with translated():
            docs = await self.dirty.find(
                {"minute": {"$gte": start, "$lt": end}}, {"_id": 0, "minute": 1}
            ).to_list()
        return [doc["minute"] for doc in docs]

    async def settled_marks(
        self, *, touched_before: datetime, minutes_before: datetime, limit: int
    ) -> list[DirtyMark]:
        """Marks last touched before ``touched_before`` of minutes before ``minutes_before``,
        oldest minute first, at most ``limit``."""
        async with translated():
            docs = (
                await self.dirty.find(
                    {"minute": {"$lt": minutes_before}, "touched": {"$lt": touched_before}},
                    {"minute": 1, "token": 1},
                )
                .sort("minute", 1)
                .limit(limit)
                .to_list()
            )
        return [(doc["minute"], str(doc["token"])) for doc in docs]

    async def clear_marks(self, marks: Sequence[DirtyMark]) -> None:
        """Remove the marks whose token is still the one read (a newer mark stays)."""
        ops = [DeleteOne({"_id": minute.isoformat(), "token": token}) for minute, token in marks]
        await bulk_write_in_chunks(self.dirty, ops)

    # -- roll-ups --------------------------------------------------------------------------

    async def replace(
        self,
        level: BucketSize,
        figures: Mapping[datetime, Figures],
        *,
        hour_sales: Mapping[datetime, Mapping[datetime, SalesFigures]] | None = None,
    ) -> None:
        """Store the figures of these buckets of ``level``; empty figures remove the document.
        ``hour_sales``: for days, the sales figures of each of their hours (``h``)."""
        ops: list[ReplaceOne[Any] | DeleteOne] = []
        for start, bucket in sorted(figures.items()):
            key = rollup_id(level, start)
            if bucket.empty:
                ops.append(DeleteOne({"_id": key}))
                continue
            doc = {
                "_id": key,
                "level": level.value,
                "start": start,
                "parent": _parent(level, start),
                "f": _packed(bucket.document()),
            }
            if hour_sales is not None:
                hours = hour_sales.get(start, {})
                doc["h"] = _packed(
                    {hour.isoformat(): sales.document() for hour, sales in sorted(hours.items())}
                )
            ops.append(ReplaceOne({"_id": key}, doc, upsert=True))
        await bulk_write_in_chunks(self.rollups[level], ops)

    async def read(
        self, spans: Sequence[Span], *, split_days: bool = False
    ) -> list[tuple[datetime, Figures]]:
        """The roll-ups of the spans: (bucket start, figures). A parent mostly covered by a
        span is read whole with one query, the few buckets of another one by one; all at once.

        ``split_days``: every hour comes from its day's ``h``, with its sales figures only (the
        rest of a day's figures is not kept per hour): what a sales summary by hour needs. So a
        span of days comes as their hours, and a span of hours is read from the documents of its
        days (one a day instead of up to 24; the day's other hours are dropped)."""
        if not split_days:
            return [
                (doc["start"], Figures.from_document(json.loads(doc["f"])))
                for doc in await self._documents(spans, unread={"parent": 0, "h": 0})
            ]
        # The hours wanted of each day: its whole day for a span of days, else those of spans
        # of hours; other levels (minutes around dirty ones) as they are.
        windows: dict[datetime, list[tuple[datetime, datetime]]] = defaultdict(list)
        for span in spans:
            if span.level is BucketSize.MINUTE:
                continue
            first = floor_time(span.start, BucketSize.DAY)
            for day in bucket_starts(first, ceil_time(span.end, BucketSize.DAY), BucketSize.DAY):
                windows[day].append(
                    (max(span.start, day), min(span.end, day + BucketSize.DAY.step))
                )
        to_read = [span for span in spans if span.level is BucketSize.MINUTE]
        for day in sorted(windows):
            following = day + BucketSize.DAY.step
            if to_read and to_read[-1].level is BucketSize.DAY and to_read[-1].end == day:
                to_read[-1] = Span(BucketSize.DAY, to_read[-1].start, following)
            else:
                to_read.append(Span(BucketSize.DAY, day, following))
        parts: list[tuple[datetime, Figures]] = []
        unsplit: list[Span] = []  # hours of days written by an earlier version, without h
        for doc in await self._documents(to_read, unread={"parent": 0}):
            if doc["level"] != BucketSize.DAY.value:
                parts.append((doc["start"], Figures.from_document(json.loads(doc["f"]))))
            elif "h" in doc:
                day_windows = windows[doc["start"]]
                for hour, sales in json.loads(doc["h"]).items():
                    start = datetime.fromisoformat(hour)
                    if any(a <= start < b for a, b in day_windows):
                        parts.append((start, Figures(sales=SalesFigures.from_document(sales))))
            else:
                unsplit.extend(Span(BucketSize.HOUR, a, b) for a, b in windows[doc["start"]])
        if unsplit:
            parts.extend(await self.read(unsplit))
        return parts

    async def _documents(self, spans: Sequence[Span], *, unread: Mapping[str, int]) -> list[Any]:
        """The documents of the spans' buckets (each once), without the ``unread`` fields."""
        parents: set[tuple[BucketSize, str]] = set()
        ids: set[tuple[BucketSize, str]] = set()
        levels: set[BucketSize] = set()
        for span in spans:
            if (span.end - span.start) / span.level.step > _BY_PARENT_AT_MOST:
                # A long span (years of days, up to the year 9000): every roll-up of its level,
                # as many as there are buckets with data, filtered here.
                levels.add(span.level)
                continue
            members: dict[str, list[datetime]] = defaultdict(list)
            for start in bucket_starts(span.start, span.end, span.level):
                members[_parent(span.level, start)].append(start)
            for parent, starts in members.items():
                if len(starts) > _BY_ID_AT_MOST:
                    parents.add((span.level, parent))
                else:
                    ids.update((span.level, rollup_id(span.level, start)) for start in starts)
        queries: list[tuple[BucketSize, dict[str, str]]] = [(level, {}) for level in levels]
        queries += [(level, {"parent": parent}) for level, parent in parents]
        queries += [(level, {"_id": key}) for level, key in ids]

        async def one(query: tuple[BucketSize, Mapping[str, Any]]) -> list[Any]:
            level, where = query
            async with translated():
                return await self.rollups[level].find(where, unread).to_list()

        found = await gather_reads(one, queries)
        # A parent read whole brings buckets outside the spans, and one read by id may come
        # again with its parent: keep each wanted bucket once.
        wanted = [(span.level.value, span.start, span.end) for span in spans]
        docs = {doc["_id"]: doc for batch in found for doc in batch}
        return [
            doc
            for doc in docs.values()
            if any(lv == doc["level"] and a <= doc["start"] < b for lv, a, b in wanted)
        ]

    async def move_single_collection(self, *, now: datetime) -> int:
        """Mark dirty the minutes of the single roll-up collection of earlier versions, then drop
        it: the job writes those minutes, their hours and days into the per-level collections,
        and until then the queries read the facts of those minutes. Idempotent (after a crash
        between the two, the marks are written again). How many minutes were marked."""
        async with translated():
            database = self._single.database
            if not await database.list_collection_names(filter={"name": SINGLE_COLLECTION}):
                return 0
            docs = await self._single.find(
                {"level": BucketSize.MINUTE.value}, {"_id": 0, "start": 1}
            ).to_list()
        minutes = {doc["start"] for doc in docs}
        if minutes:
            await self.mark_dirty(minutes, now=now)
        async with translated():
            await self._single.drop()
        return len(minutes)

    # -- the job's lease -------------------------------------------------------------------

    async def take_lease(self, holder: str, *, now: datetime, seconds: float) -> bool:
        """Hold (or renew) the roll-up lease for ``seconds``; False if another holder has it."""
        try:
            async with translated():
                await self.leases.update_one(
                    {"_id": _LEASE_ID, "$or": [{"holder": holder}, {"until": {"$lt": now}}]},
                    {"$set": {"holder": holder, "until": now + timedelta(seconds=seconds)}},
                    upsert=True,
                )
        except DuplicateKeyError:
            return False
        return True

    async def done(self, task: str) -> bool:
        """Whether a one-time ``task`` was done in this database."""
        async with translated():
            return await self.leases.find_one({"_id": task}) is not None

    async def mark_done(self, task: str, *, now: datetime) -> None:
        async with translated():
            await self.leases.replace_one({"_id": task}, {"at": now}, upsert=True)

    async def release_lease(self, holder: str) -> None:
        async with translated():
            await self.leases.delete_one({"_id": _LEASE_ID, "holder": holder})
