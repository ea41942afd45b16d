"""Use cases of the roll-ups (``mercato_analytics.domain.rollups``): marking the minutes an
applied fact changed, and rolling dirty minutes up into minute, hour and day roll-ups.

Why a roll-up never misses a fact
---------------------------------
A fact is inserted first, then its minutes are marked dirty (:class:`MarkDirty`); a redelivered
event marks them again, so a crash between the two is repaired by the redelivery. A process
writes the mark of a minute at most once per ``refresh`` seconds: a fact applied within
``refresh`` of that process's last mark is covered by it, because :class:`RollUp` only takes
marks untouched for ``settle`` seconds (more than ``refresh``) and reads the minute's facts
after that. The job removes a mark only if no one marked the minute again while it worked
(the mark's token). Clocks of the processes may differ by less than ``settle - refresh``.

One process at a time runs the job (a lease in the store): an hour is the merge of its minutes
and a day of its hours, and two jobs merging at once could leave one stale behind a removed mark.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from mercato_analytics.domain import (
    BucketSize,
    Figures,
    Span,
    floor_time,
    fold_per_minute,
    merge_all,
)
from mercato_analytics.domain.events import F_PLACE_TIME, F_TIME
from mercato_analytics.store import AnalyticsStore
from mercato_common.clock import utcnow

__all__ = ["MarkDirty", "RollUp"]

log = logging.getLogger("mercato_analytics.rollup")

_BACKFILLED = "minutes-backfilled"
_NEVER = datetime.min.replace(tzinfo=UTC)


class MarkDirty:
    """Marks minutes dirty, each at most once per ``refresh`` seconds from this process, and
    calls ``on_marked`` after writing marks (the roll-up job's wake-up)."""

    def __init__(
        self,
        store: AnalyticsStore,
        *,
        refresh: float,
        clock: Callable[[], datetime] = utcnow,
        on_marked: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._on_marked = on_marked
        self._refresh = timedelta(seconds=refresh)
        self._clock = clock
        self._marked: dict[datetime, datetime] = {}
        self._writing = asyncio.Lock()

    async def __call__(self, minutes: set[datetime]) -> None:
        # One mark write at a time in this process: consumers applying facts of the same minute
        # concurrently then write its mark once, not once each.
        async with self._writing:
            now = self._clock()
            due = {m for m in minutes if now - self._marked.get(m, _NEVER) >= self._refresh}
            if not due:
                return
            await self._store.rollups.mark_dirty(due, now=now)
            if len(self._marked) > 4096:
                self._marked = {m: t for m, t in self._marked.items() if now - t < self._refresh}
            for minute in due:
                self._marked[minute] = now
        if self._on_marked is not None:
            self._on_marked()


class RollUp:
    """Rolls settled dirty minutes up (see the module doc); :meth:`run_once` does one batch."""

    def __init__(
        self,
        store: AnalyticsStore,
        *,
        settle: float,
        batch: int = 200,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._store = store
        self.settle = timedelta(seconds=settle)
        self._batch = batch
        self._clock = clock

    async def run_once(self) -> int:
        """Roll up at most ``batch`` settled dirty minutes; how many were taken."""
        rollups = self._store.rollups
        now = self._clock()
        marks = await rollups.settled_marks(
            touched_before=now - self.settle,
            minutes_before=floor_time(now - self.settle, BucketSize.MINUTE),
            limit=self._batch,
        )
        if not marks:
            return 0
        minutes = sorted({minute for minute, _ in marks})
        folded = fold_per_minute(
            await self._store.facts_timed(minutes), await self._store.facts_placed(minutes)
        )
        # A minute left without facts gets empty figures: its roll-up document is removed.
        await rollups.replace(
            BucketSize.MINUTE, {minute: folded.get(minute, Figures()) for minute in minutes}
        )
        hours = sorted({floor_time(minute, BucketSize.HOUR) for minute in minutes})
        minutes_of = await self._finer_parts(hours, BucketSize.HOUR)
        await rollups.replace(BucketSize.HOUR, _merged(minutes_of))
        days = sorted({floor_time(hour, BucketSize.DAY) for hour in hours})
        hours_of = await self._finer_parts(days, BucketSize.DAY)
        await rollups.replace(
            BucketSize.DAY,
            _merged(hours_of),
            hour_sales={
                day: {hour: figures.sales for hour, figures in parts}
                for day, parts in hours_of.items()
            },
        )
        # Last: until now the queries read these minutes from their facts.
        await rollups.clear_marks(marks)
        log.debug("rolled up %d minutes (%d hours, %d days)", len(minutes), len(hours), len(days))
        return len(marks)

    async def _finer_parts(
        self, starts: list[datetime], level: BucketSize
    ) -> dict[datetime, list[tuple[datetime, Figures]]]:
        """The next finer roll-ups of each of these buckets of ``level``, with their starts."""
        finer = BucketSize.MINUTE if level is BucketSize.HOUR else BucketSize.HOUR
        return {
            start: await self._store.rollups.read([Span(finer, start, start + level.step)])
            for start in starts
        }

    async def note_fresh_database(self) -> None:
        """Before the consumers start and the queries are served: a database without facts needs
        no backfill, ever; the roll-ups of an earlier version's single collection are marked to
        be written again into the per-level ones."""
        if not await self._store.has_facts():
            await self._store.rollups.mark_done(_BACKFILLED, now=self._clock())
        await self.move_single_collection()

    async def move_single_collection(self) -> int:
        """Mark the minutes of an earlier version's single roll-up collection dirty and drop it
        (see :meth:`RollupStore.move_single_collection`). At start, and whenever the job takes the
        lease: during a rolling upgrade a replica of that version may have written it again
        while it held the lease."""
        moved = await self._store.rollups.move_single_collection(now=self._clock())
        if moved:
            log.info("marked %d minutes of the single roll-up collection to roll up again", moved)
        return moved

    async def backfill(self, *, batch: int = 1000) -> int:
        """Once per database: give the facts stored by a version without roll-ups their minutes
        and mark those minutes dirty, so that the job rolls the old history up too. The facts
        stay counted meanwhile only where their minutes are dirty. How many were given."""
        if await self._store.rollups.done(_BACKFILLED):
            return 0
        facts = await self._store.facts_without_minutes()
        for start in range(0, len(facts), batch):
            chunk = facts[start : start + batch]
            minutes: set[datetime] = set()
            for fact in chunk:
                minutes.add(floor_time(fact[F_TIME], BucketSize.MINUTE))
                if fact.get(F_PLACE_TIME) is not None:
                    minutes.add(floor_time(fact[F_PLACE_TIME], BucketSize.MINUTE))
            # Marks first: a fact given its keys is no longer found here, so a crash between
            # the two must leave its minutes marked.
            await self._store.rollups.mark_dirty(minutes, now=self._clock())
            await self._store.set_minutes(chunk)
        await self._store.rollups.mark_done(_BACKFILLED, now=self._clock())
        if facts:
            log.info("gave %d facts of an older version their minutes", len(facts))
        return len(facts)

    async def run_until_clean(self, *, rounds: int = 1000) -> int:
        """Run batches until none is left (bounded by ``rounds``); minutes taken in all."""
        total = 0
        for _ in range(rounds):
            taken = await self.run_once()
            total += taken
            if taken < self._batch:
                break
        return total


def _merged(parts_of: dict[datetime, list[tuple[datetime, Figures]]]) -> dict[datetime, Figures]:
    """Each bucket's figures: the merge of its finer parts."""
    return {start: merge_all([f for _, f in parts]) for start, parts in parts_of.items()}
