"""Use case: one consumed event's effect, exactly once.

The event's fact goes to the store in one insert keyed by the event id (the idempotency check
and the effect at once; see ``store``); then the minutes it changed are marked for the roll-ups
(``rollup.MarkDirty``), a duplicate's too, so a crash between the two is repaired by the
redelivery. A consumer's polled batch can be prepared first (:meth:`ApplyEvent.prepare`): its
facts go to the store in bulk inserts, and each event then only marks its minutes and counts
its outcome, so a batch costs one round trip for its facts instead of one per event. A
database outage is not the event's fault: the use case waits it out with backoff instead of
failing the record, so an outage never dead-letters good events. Every outcome notes the
partition's progress (freshness) and is counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TypeVar

from mercato_analytics.domain import (
    DomainEvent,
    EventOrigin,
    Ignored,
    Progress,
    StoreUnavailable,
    dirty_minutes_of,
    type_label,
)
from mercato_analytics.metrics import AnalyticsMetrics
from mercato_analytics.service.rollup import MarkDirty
from mercato_analytics.store import AnalyticsStore, ApplyOutcome
from mercato_common.clock import utcnow
from mercato_common.kafka import Backoff

__all__ = ["ApplyEvent"]

log = logging.getLogger("mercato_analytics.apply")

_T = TypeVar("_T")

# Seconds between two marks of one minute by one process (see ``rollup``).
DEFAULT_MARK_REFRESH = 1.0


class ApplyEvent:
    """Applies one event (already mapped to the domain) and returns its outcome: ``applied``,
    ``duplicate``, ``ignored`` (a known type without aggregates) or ``unknown`` (a type this
    version does not know, skipped as the envelope contract requires)."""

    def __init__(
        self,
        store: AnalyticsStore,
        *,
        metrics: AnalyticsMetrics,
        progress: Progress,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = utcnow,
        mark_refresh: float = DEFAULT_MARK_REFRESH,
        on_marked: Callable[[], None] | None = None,
    ) -> None:
        self._store = store
        self._mark_dirty = MarkDirty(store, refresh=mark_refresh, clock=clock, on_marked=on_marked)
        self._metrics = metrics
        self.progress = progress
        self._backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=5.0)
        self._clock = clock
        self._stopping = asyncio.Event()
        # Outcomes of facts inserted by :meth:`prepare`, by (topic, partition) and offset: one
        # entry per partition, replaced by its next batch, so a batch cut short by a stop or a
        # rebalance leaves nothing behind for long.
        self._prepared: dict[tuple[str, int], dict[int, ApplyOutcome]] = {}

    async def prepare(self, batch: Sequence[tuple[EventOrigin, DomainEvent]]) -> None:
        """Insert the facts of a polled batch at once; each event's call then uses the outcome.

        One attempt, no waiting: when it fails, every event is inserted by its own call (the
        facts this attempt inserted count as duplicates there; nothing is lost or doubled).
        """
        if not batch:
            return
        outcomes = await self._store.apply_many(batch)
        prepared: dict[tuple[str, int], dict[int, ApplyOutcome]] = {}
        for (origin, _), outcome in zip(batch, outcomes, strict=True):
            if outcome is not None:
                prepared.setdefault((origin.topic, origin.partition), {})[origin.offset] = outcome
        self._prepared.update(prepared)

    def stop(self) -> None:
        """Stop waiting for the database (the event in hand stays unapplied)."""
        self._stopping.set()

    async def __call__(self, origin: EventOrigin, event: DomainEvent | Ignored | None) -> str:
        if event is None:
            outcome = "unknown"
        elif isinstance(event, Ignored):
            outcome = "ignored"
        else:
            prepared = self._prepared.get((origin.topic, origin.partition), {})
            result = prepared.pop(origin.offset, None)
            if result is None:
                result = await self._waiting(origin, lambda: self._store.apply(origin, event))
            await self._waiting(origin, lambda: self._mark_dirty(dirty_minutes_of(event)))
            outcome = "applied" if result is ApplyOutcome.APPLIED else "duplicate"
        now = self._clock()
        if outcome == "applied":
            self._metrics.latency.labels(origin.topic).observe(
                max((now - origin.event_time).total_seconds(), 0.0)
            )
        self._metrics.events.labels(type_label(origin.event_type), outcome).inc()
        self.progress.note(origin.topic, origin.partition, origin.event_time, now)
        return outcome

    async def _waiting(self, origin: EventOrigin, write: Callable[[], Awaitable[_T]]) -> _T:
        """``write()``, retried while the database is unavailable (until stopped)."""
        attempt = 0
        while True:
            try:
                return await write()
            except StoreUnavailable as exc:
                # Waiting, not failing: the runner's bounded attempts are for the event's faults.
                if self._stopping.is_set():
                    raise
                attempt += 1
                self._metrics.store_retries.inc()
                log.warning(
                    "store unavailable applying %s[%s]@%s (attempt %d): %s",
                    origin.topic,
                    origin.partition,
                    origin.offset,
                    attempt,
                    exc,
                )
                try:
                    await asyncio.wait_for(self._stopping.wait(), self._backoff.delay(attempt))
                except TimeoutError:
                    continue
                raise
