"""Payload mapping, the handler (with a fake store), dead-letter counting, progress, settings."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mercato.orders.events.v1 import events_pb2 as order_events
from mercato.type.v1 import money_pb2
from mercato_analytics import samples
from mercato_analytics.consume import CountingDeadLetterSink, EventApplier
from mercato_analytics.convert import to_domain_event
from mercato_analytics.domain import (
    IGNORED,
    EventOrigin,
    InvalidEvent,
    OrderEvent,
    OrderEventKind,
    Progress,
    UserRegistered,
    type_label,
)
from mercato_analytics.metrics import AnalyticsMetrics
from mercato_analytics.settings import AnalyticsSettings
from mercato_analytics.store import ApplyOutcome, StoreUnavailable
from mercato_common.kafka import (
    Backoff,
    ConsumedEvent,
    PermanentError,
    UndecodableMessageError,
    dead_letter_headers,
    new_envelope,
)
from mercato_common.settings import load_settings

T = datetime(2026, 5, 1, 12, 0, 30, tzinfo=UTC)
LINES = [samples.Line("MUG-1", 2, 1000)]


def _paid(**overrides: Any) -> order_events.OrderPaid:
    message = order_events.OrderPaid(
        order_id="o-1",
        user_id="u-1",
        amount=money_pb2.Money(currency_code="EUR", amount_minor=2000),
        lines=[
            order_events.OrderLine(
                sku="MUG-1",
                quantity=2,
                unit_price=money_pb2.Money(currency_code="EUR", amount_minor=1000),
                line_total=money_pb2.Money(currency_code="EUR", amount_minor=2000),
            )
        ],
    )
    message.place_time.FromDatetime(T - timedelta(minutes=3))
    message.pay_time.FromDatetime(T)
    for name, value in overrides.items():
        if value is None:
            message.ClearField(name)
        else:
            getattr(message, name).CopyFrom(value)
    return message


def test_every_sample_maps_to_its_domain_event() -> None:
    paid = to_domain_event(
        samples.order_paid(
            "o-1",
            user_id="u",
            lines=LINES,
            currency="EUR",
            place_time=T - timedelta(minutes=3),
            pay_time=T,
        )
    )
    assert isinstance(paid, OrderEvent)
    assert (paid.kind, paid.time, paid.currency, paid.amount) == (
        OrderEventKind.PAID,
        T,
        "EUR",
        2000,
    )
    assert paid.place_time == T - timedelta(minutes=3)
    assert [(line.sku, line.quantity, line.amount) for line in paid.lines] == [("MUG-1", 2, 2000)]
    refund = to_domain_event(
        samples.order_cancelled(
            "o-1",
            user_id="u",
            total=2000,
            currency="EUR",
            after_payment=True,
            place_time=T,
            cancel_time=T,
        )
    )
    assert isinstance(refund, OrderEvent)
    assert refund.after_payment
    assert refund.amount == 2000
    user = to_domain_event(samples.user_registered("u-1", register_time=T))
    assert user == UserRegistered("u-1", T)
    for envelope, kind in (
        (
            samples.order_placed("o", user_id="u", lines=LINES, currency="EUR", place_time=T),
            "PLACED",
        ),
        (samples.order_fulfilled("o", user_id="u", place_time=T, fulfill_time=T), "FULFILLED"),
        (samples.order_failed("o", user_id="u", place_time=T, fail_time=T), "FAILED"),
    ):
        event = to_domain_event(envelope)
        assert isinstance(event, OrderEvent)
        assert event.kind is OrderEventKind[kind]
    assert to_domain_event(samples.stock_reserved("o", lines=LINES, reserve_time=T)) is IGNORED


def test_contract_breaches_are_invalid_events() -> None:
    def envelope(message: order_events.OrderPaid) -> Any:
        return new_envelope(message, source="orders", subject="o-1")

    assert isinstance(to_domain_event(envelope(_paid())), OrderEvent)
    with pytest.raises(InvalidEvent, match="pay_time"):
        to_domain_event(envelope(_paid(pay_time=None)))
    with pytest.raises(InvalidEvent, match="amount"):
        to_domain_event(envelope(_paid(amount=None)))
    odd = _paid(amount=money_pb2.Money(currency_code="$x"))
    odd.lines[0].line_total.currency_code = "$x"
    with pytest.raises(InvalidEvent, match="ISO 4217"):
        to_domain_event(envelope(odd))
    mixed = _paid()
    mixed.lines[0].line_total.currency_code = "USD"
    with pytest.raises(InvalidEvent, match="USD"):
        to_domain_event(envelope(mixed))
    # A payload of another type than the envelope claims cannot even be unpacked.
    wrong = envelope(_paid())
    wrong.type = "mercato.orders.events.v1.OrderPlaced"
    with pytest.raises(UndecodableMessageError):
        to_domain_event(wrong)


def test_unknown_types_are_skipped() -> None:
    from google.protobuf import timestamp_pb2

    envelope = new_envelope(timestamp_pb2.Timestamp(), source="orders", subject="x")
    assert to_domain_event(envelope) is None
    assert type_label(envelope.type) == "other"
    assert type_label("mercato.orders.events.v1.OrderPaid") == "OrderPaid"
    assert type_label("mercato.catalog.events.v1.StockLow") == "StockLow"


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    value: bytes = b""
    key: bytes | None = None
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 0


def _consumed(envelope: Any, offset: int = 0) -> ConsumedEvent:
    return ConsumedEvent(
        envelope=envelope, record=_Record("orders", 2, offset), headers={}, attempt=1
    )


class FakeMarks:
    def __init__(self) -> None:
        self.marked: list[set[datetime]] = []

    async def mark_dirty(self, minutes: set[datetime], *, now: datetime) -> None:
        self.marked.append(set(minutes))


class FakeStore:
    def __init__(self, failures: int = 0) -> None:
        self.facts: dict[str, Any] = {}
        self.failures = failures
        self.rollups = FakeMarks()
        self.single_inserts = 0
        self.refused_in_bulk: set[str] = set()

    async def apply(self, origin: EventOrigin, event: Any) -> ApplyOutcome:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("down")
        self.single_inserts += 1
        if origin.event_id in self.facts:
            return ApplyOutcome.DUPLICATE
        self.facts[origin.event_id] = event
        return ApplyOutcome.APPLIED

    async def apply_many(self, events: list[tuple[EventOrigin, Any]]) -> list[ApplyOutcome | None]:
        # Like the real store: a duplicate key is that event's outcome; an event named in
        # refused_in_bulk fails as another write error would (None), the others are inserted.
        outcomes: list[ApplyOutcome | None] = []
        for origin, event in events:
            if origin.event_id in self.refused_in_bulk:
                outcomes.append(None)
            elif origin.event_id in self.facts:
                outcomes.append(ApplyOutcome.DUPLICATE)
            else:
                self.facts[origin.event_id] = event
                outcomes.append(ApplyOutcome.APPLIED)
        return outcomes


def _applier(store: FakeStore, registry: CollectorRegistry, progress: Progress) -> EventApplier:
    return EventApplier(
        store,  # type: ignore[arg-type]
        metrics=AnalyticsMetrics(registry),
        progress=progress,
        backoff=Backoff(initial=0.001, maximum=0.002),
        clock=lambda: T + timedelta(seconds=2),
    )


def _sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    value = registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


async def test_applier_applies_once_and_counts() -> None:
    registry, progress, store = CollectorRegistry(), Progress(), FakeStore(failures=2)
    applier = _applier(store, registry, progress)
    envelope = samples.order_paid(
        "o-1", user_id="u", lines=LINES, currency="EUR", place_time=T, pay_time=T
    )
    assert await applier.apply_record(_consumed(envelope)) == "applied"  # after 2 store retries
    assert await applier.apply_record(_consumed(envelope, offset=1)) == "duplicate"
    ignored = samples.stock_reserved("o-1", lines=LINES, reserve_time=T)
    assert await applier.apply_record(_consumed(ignored, offset=2)) == "ignored"
    assert len(store.facts) == 1
    # The fact's minute is marked for the roll-ups once: the duplicate came within the refresh.
    assert store.rollups.marked == [{T.replace(second=0, microsecond=0)}]
    labels = {"type": "OrderPaid"}
    assert _sample(registry, "mercato_analytics_events_total", outcome="applied", **labels) == 1
    assert _sample(registry, "mercato_analytics_events_total", outcome="duplicate", **labels) == 1
    assert _sample(registry, "mercato_analytics_store_retries_total") == 2
    latency = _sample(registry, "mercato_analytics_event_apply_latency_seconds_sum", topic="orders")
    assert latency == pytest.approx(2.0)
    assert progress.take() == {("orders", 2): (T, T + timedelta(seconds=2))}


async def test_a_prepared_batch_is_inserted_once_and_each_record_uses_its_outcome() -> None:
    registry, progress, store = CollectorRegistry(), Progress(), FakeStore()
    applier = _applier(store, registry, progress)
    paid = [
        samples.order_paid(
            f"o-{n}", user_id="u", lines=LINES, currency="EUR", place_time=T, pay_time=T
        )
        for n in range(3)
    ]
    ignored = samples.stock_reserved("o-1", lines=LINES, reserve_time=T)
    bad = new_envelope(_paid(place_time=None), source="orders", subject="o-9")
    store.refused_in_bulk.add(paid[2].id)
    batch = [
        _consumed(paid[0], offset=0),
        _consumed(paid[1], offset=1),
        _consumed(paid[0], offset=2),  # the same event again within the batch
        _consumed(ignored, offset=3),
        _consumed(bad, offset=4),
        _consumed(paid[2], offset=5),
    ]
    await applier.prepare(batch)  # the contract breach is left to its own call
    assert set(store.facts) == {paid[0].id, paid[1].id}
    outcomes = [await applier.apply_record(record) for record in batch if record.offset != 4]
    assert outcomes == ["applied", "applied", "duplicate", "ignored", "applied"]
    # Only the event the bulk insert refused was inserted by its own call.
    assert store.single_inserts == 1
    assert set(store.facts) == {paid[0].id, paid[1].id, paid[2].id}
    with pytest.raises(PermanentError):
        await applier.apply_record(batch[4])
    # A record handled again (a retry) finds no prepared outcome left: its own insert says.
    assert await applier.apply_record(batch[1]) == "duplicate"
    assert store.single_inserts == 2
    labels = {"type": "OrderPaid"}
    assert _sample(registry, "mercato_analytics_events_total", outcome="applied", **labels) == 3
    assert _sample(registry, "mercato_analytics_events_total", outcome="duplicate", **labels) == 2


async def test_applier_dead_letters_contract_breaches_at_once() -> None:
    applier = _applier(FakeStore(), CollectorRegistry(), Progress())
    bad = new_envelope(_paid(place_time=None), source="orders", subject="o-1")
    with pytest.raises(PermanentError, match="place_time"):
        await applier.apply_record(_consumed(bad))
    no_time = samples.order_placed("o", user_id="u", lines=LINES, currency="EUR", place_time=T)
    no_time.ClearField("time")
    with pytest.raises(PermanentError, match="time"):
        await applier.apply_record(_consumed(no_time))


async def test_applier_stops_waiting_for_the_store_when_stopped() -> None:
    store = FakeStore(failures=10**6)
    applier = EventApplier(
        store,  # type: ignore[arg-type]
        metrics=AnalyticsMetrics(CollectorRegistry()),
        progress=Progress(),
        backoff=Backoff(initial=5.0, maximum=5.0, jitter=0),
    )
    envelope = samples.user_registered("u-1", register_time=T)
    task = asyncio.create_task(applier.apply_record(_consumed(envelope)))
    await asyncio.sleep(0.05)
    applier.stop()
    with pytest.raises(StoreUnavailable):
        await asyncio.wait_for(task, 1.0)


async def test_dead_letter_sink_counts() -> None:
    sent: list[tuple[str, bytes]] = []

    class Sink:
        async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
            sent.append((topic, value))

    registry = CollectorRegistry()
    sink = CountingDeadLetterSink(Sink(), AnalyticsMetrics(registry))
    record = _Record(
        "t.orders", 3, 17, b"junk", headers=(("ce_type", b"mercato.orders.events.v1.OrderPaid"),)
    )
    headers = dead_letter_headers(record, group_id="g", error=ValueError("bad"), attempts=1)
    await sink.send_and_wait("t.dlq", b"junk", key=None, headers=headers)
    assert sent == [("t.dlq", b"junk")]
    assert _sample(registry, "mercato_analytics_dead_letters_total", topic="t.orders") == 1
    assert (
        _sample(registry, "mercato_analytics_events_total", type="OrderPaid", outcome="failed") == 1
    )


def test_progress_keeps_the_newest() -> None:
    progress = Progress()
    progress.note("a", 0, T, T)
    progress.note("a", 0, T - timedelta(hours=1), T + timedelta(seconds=1))
    progress.note("b", 1, T, T)
    marks = progress.take()
    assert marks[("a", 0)] == (T, T + timedelta(seconds=1))
    assert progress.take() == {}
    progress.restore(marks)
    assert progress.take() == marks


def test_settings_from_environment() -> None:
    settings = load_settings(
        AnalyticsSettings,
        {
            "MERCATO_ANALYTICS_ORDERS_EVENTS_TOPIC": "x.orders",
            "MERCATO_ANALYTICS_CONSUMERS": "3",
            "MERCATO_ANALYTICS_CONSUME": "false",
            "MERCATO_ANALYTICS_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
        },
    )
    assert (settings.grpc_port, settings.metrics_port) == (50064, 9464)
    assert settings.consumer_group == "mercato.analytics"
    assert settings.topics == ("mercato.auth.events.v1", "mercato.catalog.events.v1", "x.orders")
    assert (settings.consumers, settings.consume) == (3, False)
