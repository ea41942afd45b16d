"""Periodic work of analytics, as lifecycle parts built on ``Periodic``.

* :class:`ProgressFlush` writes the consumers' per-partition progress (freshness) every
  ``interval`` seconds and once more at stop; declare it before the consumer group, so it stops
  after the consumers and their last progress is written too.
* :class:`LagMonitor` keeps ``mercato_analytics_consumer_lag`` (group-wide, read from Kafka)
  current.
* :class:`RollupJob` rolls the settled dirty minutes up every ``interval`` seconds while this
  process holds the roll-up lease (one process of all replicas at a time).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta

from mercato_analytics.domain import AnalyticsError, Progress
from mercato_analytics.metrics import AnalyticsMetrics
from mercato_analytics.positions import KafkaPositions
from mercato_analytics.service import RollUp
from mercato_analytics.store import AnalyticsStore
from mercato_common.clock import utcnow
from mercato_common.runtime import Periodic

__all__ = ["LagMonitor", "ProgressFlush", "RollupJob"]

log = logging.getLogger("mercato_analytics.jobs")


class ProgressFlush:
    """Writes what ``progress`` collected; a failed write is put back for the next flush."""

    def __init__(
        self,
        progress: Progress,
        store: AnalyticsStore,
        metrics: AnalyticsMetrics,
        *,
        interval: float,
    ) -> None:
        self.progress = progress
        self._store = store
        self._metrics = metrics
        self._periodic = Periodic(
            "analytics-progress", self.flush, interval=interval, immediate=False, logger=log
        )

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
        await self.flush()

    async def flush(self) -> None:
        marks = self.progress.take()
        if not marks:
            return
        try:
            await self._store.record_progress(marks)
        except Exception as exc:
            self.progress.restore(marks)
            log.warning("progress flush failed: %r", exc)
            return
        newest: dict[str, datetime] = {}
        for (topic, _), (event_time, _) in marks.items():
            newest[topic] = max(newest.get(topic, event_time), event_time)
        for topic, event_time in newest.items():
            self._metrics.newest_event.labels(topic).set(event_time.timestamp())


class LagMonitor:
    """Keeps ``mercato_analytics_consumer_lag`` (group-wide) current every ``interval`` s."""

    def __init__(
        self, positions: KafkaPositions, metrics: AnalyticsMetrics, *, interval: float
    ) -> None:
        self.positions = positions
        self._metrics = metrics
        # An interval of 0 turns the gauge off; a refresh in progress is cancelled at stop.
        self._periodic = (
            Periodic("analytics-lag", self._tick, interval=interval, logger=log)
            if interval > 0
            else None
        )

    async def start(self) -> None:
        if self._periodic is not None:
            await self._periodic.start()

    async def refresh(self) -> None:
        for topic, partition, committed, end in await self.positions.read():
            self._metrics.lag.labels(topic, str(partition)).set(max(end - committed, 0))

    async def _tick(self) -> None:
        try:
            await self.refresh()
        except AnalyticsError as exc:  # Kafka unreachable: expected, and GetFreshness says so
            log.debug("lag refresh failed: %s", exc)

    async def stop(self) -> None:
        if self._periodic is not None:
            await self._periodic.stop()
        await self.positions.stop()


class RollupJob:
    """Runs :class:`RollUp` while holding the lease (``lease`` seconds, renewed once half of it
    has passed, so an idle holder writes the lease every ``lease / 2`` seconds, not every run;
    released at stop so another replica takes over at once).

    It runs every ``interval`` s while runs find settled dirty minutes or a mark of this process
    has yet to settle (:meth:`wake`, called when this process marks minutes dirty), else every
    ``idle_interval`` s. So an idle suite does not read the marks every second, and a minute
    marked by another replica is rolled up at most ``idle_interval`` s later than it would be;
    until then the queries read it from its facts, as they read every dirty minute."""

    def __init__(
        self,
        rollup: RollUp,
        store: AnalyticsStore,
        *,
        interval: float,
        idle_interval: float,
        lease: float,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.rollup = rollup
        self._interval = interval
        self._idle_interval = max(idle_interval, interval)
        # Until when runs stay ``interval`` apart though they find nothing: this process's
        # latest mark has settled by then.
        self._marked_until: datetime | None = None
        self._store = store
        self._lease = lease
        self._clock = clock
        self.holder = uuid.uuid4().hex
        self._backfilled = False
        # When the lease is renewed next (half of it before it runs out); None while not held.
        self._renew_at: datetime | None = None
        self._periodic = Periodic(
            "analytics-rollup", self._tick, interval=interval, immediate=False, logger=log
        )

    async def start(self) -> None:
        # Declared before the consumers: a database still without facts needs no backfill.
        await self.rollup.note_fresh_database()
        await self._periodic.start()

    @property
    def interval(self) -> float:
        """Seconds until the next run (after the one in progress, if any)."""
        return self._periodic.interval

    def wake(self) -> None:
        """This process marked minutes dirty: run now, then every ``interval`` at least until
        the marks have settled."""
        self._marked_until = self._clock() + self.rollup.settle + timedelta(seconds=self._interval)
        self._periodic.interval = self._interval
        self._periodic.wake()

    async def stop(self) -> None:
        await self._periodic.stop()
        try:
            await self._store.rollups.release_lease(self.holder)
        except AnalyticsError as exc:
            log.debug("roll-up lease not released: %s", exc)

    async def _tick(self) -> None:
        try:
            now = self._clock()
            if self._renew_at is None or now >= self._renew_at:
                newly = self._renew_at is None
                holding = await self._store.rollups.take_lease(
                    self.holder, now=now, seconds=self._lease
                )
                if holding and newly:
                    # Newly taken: an earlier version's replica may have held the lease and
                    # written its single roll-up collection meanwhile (only the holder writes
                    # roll-ups).
                    await self.rollup.move_single_collection()
                # Nobody else takes the lease before it runs out (``now + lease``).
                self._renew_at = now + timedelta(seconds=self._lease / 2) if holding else None
            if self._renew_at is not None:
                if not self._backfilled:
                    await self.rollup.backfill()
                    self._backfilled = True
                taken = await self.rollup.run_until_clean(rounds=10)
                awaited = self._marked_until is not None and self._clock() < self._marked_until
                self._periodic.interval = (
                    self._interval if taken or awaited else self._idle_interval
                )
            else:
                self._periodic.interval = self._idle_interval  # another replica holds it
        except AnalyticsError as exc:  # the database is unavailable: next tick
            self._periodic.interval = self._interval
            log.warning("roll-up skipped: %s", exc)
