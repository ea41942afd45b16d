"""The handlers of the consumed events: envelopes → domain events → the ``ApplyEvent`` use case.

:class:`EventApplier` is the consumer group's handler. For each record it maps the payload to a
domain event (``convert``); a payload that breaks the contract raises :class:`PermanentError`
(dead-lettered at once, consumption continues). The use case then applies the event's fact
exactly once, waiting while the database is unreachable, and notes the partition's progress.
Before that, :meth:`EventApplier.prepare` (the runner's ``prepare_batch``) inserts the facts of
the whole polled batch in bulk, so each record's own call finds its fact's outcome at hand.
Types that feed no aggregate (catalog events, role changes) are acknowledged and counted as
``ignored``; types this version does not know are skipped (``unknown``), as the envelope
contract requires.

:class:`CountingDeadLetterSink` wraps the group's dead-letter producer to count what is parked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from mercato_analytics.convert import envelope_time, to_domain_event
from mercato_analytics.domain import (
    DomainEvent,
    EventOrigin,
    Ignored,
    InvalidEvent,
    type_label,
)
from mercato_analytics.metrics import AnalyticsMetrics
from mercato_analytics.service import ApplyEvent
from mercato_analytics.store import AnalyticsStore
from mercato_common.kafka import (
    ConsumedEvent,
    DeadLetterSink,
    PermanentError,
    UndecodableMessageError,
    headers_to_map,
)
from mercato_common.kafka.consumer import H_DLQ_TOPIC

__all__ = ["CountingDeadLetterSink", "EventApplier"]


class EventApplier:
    """The consumer group's handler: one record → its effect, exactly once (see module doc)."""

    def __init__(self, store: AnalyticsStore, **options: Any) -> None:
        """``options`` are those of :class:`ApplyEvent` (metrics, progress, backoff, clock,
        on_marked)."""
        self._apply = ApplyEvent(store, **options)

    def stop(self) -> None:
        """Stop waiting for the database (the record in hand stays uncommitted)."""
        self._apply.stop()

    async def __call__(self, event: ConsumedEvent) -> None:
        await self.apply_record(event)

    async def prepare(self, events: Sequence[ConsumedEvent]) -> None:
        """The runner's ``prepare_batch``: the facts of a polled batch in bulk. Records that
        break the contract or feed no aggregate are left to their own call."""
        batch = []
        for event in events:
            try:
                origin, domain_event = _mapped(event)
            except (PermanentError, UndecodableMessageError):
                continue
            if isinstance(domain_event, DomainEvent):
                batch.append((origin, domain_event))
        await self._apply.prepare(batch)

    async def apply_record(self, event: ConsumedEvent) -> str:
        """Apply one record; returns the outcome (applied, duplicate, ignored, unknown)."""
        return await self._apply(*_mapped(event))


def _mapped(event: ConsumedEvent) -> tuple[EventOrigin, DomainEvent | Ignored | None]:
    """Where a record comes from and its domain event; :class:`PermanentError` if its payload
    breaks the contract."""
    envelope = event.envelope
    try:
        origin = EventOrigin(
            event_id=envelope.id,
            event_type=envelope.type,
            event_time=envelope_time(envelope),
            topic=event.topic,
            partition=event.partition,
            offset=event.offset,
        )
        return origin, to_domain_event(envelope)
    except InvalidEvent as exc:
        raise PermanentError(f"{envelope.type}: {exc}") from exc


@dataclass(eq=False)
class CountingDeadLetterSink:
    """Wraps the dead-letter producer to count what is parked (per source topic and type)."""

    sink: DeadLetterSink
    metrics: AnalyticsMetrics

    async def send_and_wait(self, topic: str, value: bytes, **options: Any) -> Any:
        result = await self.sink.send_and_wait(topic, value, **options)
        values = headers_to_map(options.get("headers", ()))
        self.metrics.dead_letters.labels(values.get(H_DLQ_TOPIC, "")).inc()
        self.metrics.events.labels(type_label(values.get("ce_type", "")), "failed").inc()
        return result
