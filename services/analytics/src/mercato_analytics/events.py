"""The consumer side: envelopes → domain events → effects applied exactly once, and metrics.

:class:`EventApplier` is the :class:`mercato_common.kafka.ConsumerRunner` handler. For each
record it

1. maps the payload to a domain event (:func:`to_domain_event`); a payload that breaks the
   contract raises :class:`PermanentError` (dead-lettered at once, consumption continues),
2. applies its effect, the event's one fact document, through :meth:`AnalyticsStore.apply`
   (an insert keyed by the event id: the idempotency check and the effect in one atomic write;
   see store.py), waiting while the database is unreachable, and
3. notes the partition's progress for the freshness figures.

Types that feed no aggregate (catalog events, role changes) are acknowledged and counted as
``ignored``; types this version does not know are skipped (``unknown``), as the envelope
contract requires.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from google.protobuf.timestamp_pb2 import Timestamp
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from mercato.auth.events.v1 import events_pb2 as auth_events
from mercato.orders.events.v1 import events_pb2 as order_events
from mercato.orders.v1 import orders_pb2
from mercato_analytics.domain import (
    InvalidEvent,
    OrderEvent,
    OrderEventKind,
    SaleLine,
    UserRegistered,
)
from mercato_analytics.store import AnalyticsStore, ApplyOutcome, StoreUnavailable
from mercato_common.kafka import (
    Backoff,
    ConsumedEvent,
    DeadLetterSink,
    Envelope,
    PermanentError,
    headers_to_map,
    unpack_data,
)
from mercato_common.kafka.consumer import H_DLQ_TOPIC

__all__ = [
    "IGNORED",
    "IGNORED_TYPES",
    "AnalyticsMetrics",
    "CountingDeadLetterSink",
    "EventApplier",
    "Ignored",
    "Progress",
    "to_domain_event",
    "type_label",
]

log = logging.getLogger("mercato_analytics.events")

_ORDERS = "mercato.orders.events.v1."
_AUTH = "mercato.auth.events.v1."
_CATALOG = "mercato.catalog.events.v1."

# Known event types that feed no aggregate: consumed, acknowledged, counted as "ignored".
IGNORED_TYPES: Final = frozenset(
    {
        _AUTH + "UserRolesChanged",
        _AUTH + "UserDisabled",
        *(
            _CATALOG + name
            for name in (
                "ProductCreated",
                "ProductUpdated",
                "ProductArchived",
                "StockAdjusted",
                "StockLow",
                "StockReserved",
                "StockReleased",
                "StockCommitted",
            )
        ),
    }
)
AGGREGATED_TYPES: Final = frozenset(
    {_AUTH + "UserRegistered", *(_ORDERS + kind.value for kind in OrderEventKind)}
)


def type_label(type_name: str) -> str:
    """The metrics label of an event type: its short name when known, else ``other``."""
    if type_name in AGGREGATED_TYPES or type_name in IGNORED_TYPES:
        return type_name.rsplit(".", 1)[-1]
    return "other"


# --- payload → domain event -----------------------------------------------------------------


def _time(message: Any, name: str) -> datetime:
    if not message.HasField(name):
        raise InvalidEvent(f"{type(message).__name__}.{name} is missing")
    ts: Timestamp = getattr(message, name)
    try:
        return ts.ToDatetime(tzinfo=UTC)
    except (ValueError, OverflowError) as exc:
        raise InvalidEvent(f"{type(message).__name__}.{name} is not a valid time") from exc


def _lines(message: order_events.OrderPaid) -> tuple[SaleLine, ...]:
    currency = message.amount.currency_code
    lines = []
    for index, line in enumerate(message.lines):
        if not line.HasField("line_total"):
            raise InvalidEvent(f"OrderPaid.lines[{index}].line_total is missing")
        if line.line_total.currency_code != currency:
            raise InvalidEvent(
                f"OrderPaid.lines[{index}] is in {line.line_total.currency_code!r}, "
                f"the order in {currency!r}"
            )
        lines.append(
            SaleLine(sku=line.sku, quantity=line.quantity, amount=line.line_total.amount_minor)
        )
    return tuple(lines)


def _order_event(envelope: Envelope, name: str) -> OrderEvent:
    if name == "OrderPlaced":
        placed = unpack_data(envelope, order_events.OrderPlaced)
        when = _time(placed, "place_time")
        return OrderEvent(OrderEventKind.PLACED, placed.order_id, when, when)
    if name == "OrderPaid":
        paid = unpack_data(envelope, order_events.OrderPaid)
        if not paid.HasField("amount"):
            raise InvalidEvent("OrderPaid.amount is missing")
        return OrderEvent(
            OrderEventKind.PAID,
            paid.order_id,
            _time(paid, "pay_time"),
            _time(paid, "place_time"),
            currency=paid.amount.currency_code,
            amount=paid.amount.amount_minor,
            lines=_lines(paid),
        )
    if name == "OrderCancelled":
        cancelled = unpack_data(envelope, order_events.OrderCancelled)
        after_payment = cancelled.previous_state == orders_pb2.ORDER_STATE_PAID
        if after_payment and not cancelled.HasField("total"):
            raise InvalidEvent("OrderCancelled.total is missing (refund of a paid order)")
        return OrderEvent(
            OrderEventKind.CANCELLED,
            cancelled.order_id,
            _time(cancelled, "cancel_time"),
            _time(cancelled, "place_time"),
            currency=cancelled.total.currency_code,
            amount=cancelled.total.amount_minor,
            after_payment=after_payment,
        )
    if name == "OrderFulfilled":
        fulfilled = unpack_data(envelope, order_events.OrderFulfilled)
        return OrderEvent(
            OrderEventKind.FULFILLED,
            fulfilled.order_id,
            _time(fulfilled, "fulfill_time"),
            _time(fulfilled, "place_time"),
        )
    failed = unpack_data(envelope, order_events.OrderFailed)
    return OrderEvent(
        OrderEventKind.FAILED,
        failed.order_id,
        _time(failed, "fail_time"),
        _time(failed, "place_time"),
    )


class Ignored:
    """Marks a known event type that feeds no aggregate."""


IGNORED: Final = Ignored()


def to_domain_event(envelope: Envelope) -> OrderEvent | UserRegistered | Ignored | None:
    """The domain event of an envelope; ``IGNORED`` for known types without aggregates, None for
    unknown types. Raises :class:`InvalidEvent` (or ``UndecodableMessageError`` for a payload
    of the wrong type) when the payload breaks the contract.
    """
    type_name = envelope.type
    if type_name in IGNORED_TYPES:
        return IGNORED
    if type_name not in AGGREGATED_TYPES:
        return None
    if type_name == _AUTH + "UserRegistered":
        registered = unpack_data(envelope, auth_events.UserRegistered)
        return UserRegistered(registered.user_id, _time(registered, "register_time"))
    return _order_event(envelope, type_name.removeprefix(_ORDERS))


# --- metrics --------------------------------------------------------------------------------

LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
    1800.0,
    3600.0,
)


class AnalyticsMetrics:
    """The service's own metrics (the runner adds ``mercato_kafka_consumer_*``)."""

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.registry = registry
        self.events = Counter(
            "mercato_analytics_events",
            "Events handled by the analytics consumers, by type and outcome "
            "(applied, duplicate, ignored, unknown, failed = dead-lettered).",
            ["type", "outcome"],
            registry=registry,
        )
        self.latency = Histogram(
            "mercato_analytics_event_apply_latency_seconds",
            "Time from an event (Envelope.time) to its effect being applied.",
            ["topic"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.dead_letters = Counter(
            "mercato_analytics_dead_letters",
            "Records parked on the dead-letter topic, by source topic.",
            ["topic"],
            registry=registry,
        )
        self.store_retries = Counter(
            "mercato_analytics_store_retries",
            "Applications retried because the database was unreachable.",
            registry=registry,
        )
        self.lag = Gauge(
            "mercato_analytics_consumer_lag",
            "Records of each partition not yet committed by the consumer group (group-wide).",
            ["topic", "partition"],
            registry=registry,
        )
        self.newest_event = Gauge(
            "mercato_analytics_newest_event_timestamp_seconds",
            "Event time of the newest event handled by this process, per topic (Unix seconds).",
            ["topic"],
            registry=registry,
        )


class CountingDeadLetterSink:
    """Wraps the dead-letter producer to count what is parked (per source topic and type)."""

    def __init__(self, sink: DeadLetterSink, metrics: AnalyticsMetrics) -> None:
        self._sink = sink
        self._metrics = metrics

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Any:
        result = await self._sink.send_and_wait(topic, value, key=key, headers=headers)
        values = headers_to_map(headers)
        self._metrics.dead_letters.labels(values.get(H_DLQ_TOPIC, "")).inc()
        self._metrics.events.labels(type_label(values.get("ce_type", "")), "failed").inc()
        return result


# --- progress (freshness) -------------------------------------------------------------------


@dataclass(slots=True)
class _Mark:
    newest_event_time: datetime
    last_applied_time: datetime


class Progress:
    """Per-partition newest event time and last applied time, flushed to the store periodically.

    Observability only, not part of the exactly-once effect: stored with ``$max``, so flushing
    twice or late changes nothing.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], _Mark] = {}

    def note(self, topic: str, partition: int, event_time: datetime, applied: datetime) -> None:
        mark = self._pending.get((topic, partition))
        if mark is None:
            self._pending[(topic, partition)] = _Mark(event_time, applied)
            return
        mark.newest_event_time = max(mark.newest_event_time, event_time)
        mark.last_applied_time = max(mark.last_applied_time, applied)

    def take(self) -> dict[tuple[str, int], tuple[datetime, datetime]]:
        pending, self._pending = self._pending, {}
        return {key: (m.newest_event_time, m.last_applied_time) for key, m in pending.items()}

    def restore(self, marks: Mapping[tuple[str, int], tuple[datetime, datetime]]) -> None:
        """Put back marks whose flush failed."""
        for (topic, partition), (event_time, applied) in marks.items():
            self.note(topic, partition, event_time, applied)


# --- the handler ----------------------------------------------------------------------------


class EventApplier:
    """The consumer runner's handler: one record → its effect, exactly once (see module doc)."""

    def __init__(
        self,
        store: AnalyticsStore,
        *,
        metrics: AnalyticsMetrics,
        progress: Progress,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._progress = progress
        self._backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=5.0)
        self._clock = clock
        self._stopping = asyncio.Event()

    def stop(self) -> None:
        """Stop waiting for the database (the record in hand stays uncommitted)."""
        self._stopping.set()

    async def __call__(self, event: ConsumedEvent) -> None:
        await self.apply_record(event)

    async def apply_record(self, event: ConsumedEvent) -> str:
        """Apply one record; returns the outcome (applied, duplicate, ignored, unknown)."""
        envelope = event.envelope
        label = type_label(envelope.type)
        try:
            event_time = _time(envelope, "time")
            domain_event = to_domain_event(envelope)
        except InvalidEvent as exc:
            raise PermanentError(f"{envelope.type}: {exc}") from exc
        if domain_event is None:
            outcome = "unknown"
        elif isinstance(domain_event, Ignored):
            outcome = "ignored"
        else:
            result = await self._apply(event, event_time, domain_event)
            outcome = "applied" if result is ApplyOutcome.APPLIED else "duplicate"
        now = self._clock()
        if outcome == "applied":
            self._metrics.latency.labels(event.topic).observe(
                max((now - event_time).total_seconds(), 0.0)
            )
        self._metrics.events.labels(label, outcome).inc()
        self._progress.note(event.topic, event.partition, event_time, now)
        return outcome

    async def _apply(
        self, event: ConsumedEvent, event_time: datetime, domain_event: OrderEvent | UserRegistered
    ) -> ApplyOutcome:
        attempt = 0
        while True:
            try:
                return await self._store.apply(
                    event_id=event.envelope.id,
                    event=domain_event,
                    event_type=event.envelope.type,
                    event_time=event_time,
                    topic=event.topic,
                    partition=event.partition,
                    offset=event.offset,
                )
            except StoreUnavailable as exc:
                # A database outage is not the event's fault: wait for the database instead of
                # spending the runner's bounded attempts (and dead-lettering good events).
                if self._stopping.is_set():
                    raise
                attempt += 1
                self._metrics.store_retries.inc()
                log.warning(
                    "store unavailable applying %s[%s]@%s (attempt %d): %s",
                    event.topic,
                    event.partition,
                    event.offset,
                    attempt,
                    exc,
                )
                try:
                    await asyncio.wait_for(self._stopping.wait(), self._backoff.delay(attempt))
                except TimeoutError:
                    continue
                raise
