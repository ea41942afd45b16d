"""Unit tests of mercato_common.kafka: envelope, headers, backoff, producer and consumer logic."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import IllegalStateError, KafkaConnectionError, KafkaError
from google.protobuf.duration_pb2 import Duration
from google.protobuf.struct_pb2 import Struct
from google.protobuf.timestamp_pb2 import Timestamp
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mercato_common.kafka import (
    Backoff,
    ConsumedEvent,
    ConsumerRunner,
    DeadLetterPublishError,
    Envelope,
    EventProducer,
    HandlerFailedError,
    KafkaConnection,
    PermanentError,
    ProducerNotStartedError,
    UndecodableMessageError,
    dead_letter_headers,
    decode_envelope,
    envelope_header_map,
    error_text,
    event_type_name,
    headers_to_map,
    map_to_headers,
    new_envelope,
    trace_context_map,
    unpack_data,
)

# -- helpers ---------------------------------------------------------------------------------


def make_envelope(subject: str = "order-1", value: int = 7) -> Envelope:
    payload = Struct()
    payload.update({"n": value})
    return new_envelope(payload, source="orders", subject=subject)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = b"order-1"
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp: int = 1_700_000_000_000


def record_for(envelope: Envelope, offset: int = 0, partition: int = 0) -> Record:
    headers = map_to_headers(envelope_header_map(envelope))
    return Record("orders", partition, offset, envelope.SerializeToString(), headers=headers)


@dataclass
class FakeSink:
    fail_times: int = 0
    sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = field(
        default_factory=list
    )

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Any:
        if self.fail_times:
            self.fail_times -= 1
            raise KafkaConnectionError("broker away")
        self.sent.append((topic, value, key, list(headers)))
        return None


class FakeConsumer:
    """Enough of AIOKafkaConsumer for the runner: scripted batches, recorded commits."""

    def __init__(self, batches: list[dict[TopicPartition, list[Record]]]) -> None:
        self.batches = batches
        self.commits: list[dict[TopicPartition, int]] = []
        self.started = False
        self.stopped = False
        self.subscribed: list[str] = []
        self.assigned: set[TopicPartition] = set()
        for batch in batches:
            self.assigned.update(batch)
        self.exhausted = asyncio.Event()
        self.timeouts: list[int] = []

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        self.subscribed = topics

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[Record]]:
        self.timeouts.append(timeout_ms)
        if self.batches:
            return self.batches.pop(0)
        self.exhausted.set()
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return self.assigned

    def highwater(self, tp: TopicPartition) -> int | None:
        return 10


def runner_for(
    handler: Any,
    *,
    consumer: FakeConsumer | None = None,
    sink: FakeSink | None = None,
    dlq: str | None = "orders.dlq",
    **kwargs: Any,
) -> ConsumerRunner:
    return ConsumerRunner(
        "127.0.0.1:1",
        group_id="analytics",
        topics=["orders"],
        handler=handler,
        dead_letter_topic=dlq,
        dead_letter_producer=(sink if sink is not None else FakeSink()) if dlq else None,
        backoff=Backoff(initial=0.001, maximum=0.002, jitter=0),
        registry=CollectorRegistry(),
        consumer_factory=(lambda: consumer) if consumer is not None else None,
        poll_timeout_ms=10,
        **kwargs,
    )


# -- backoff ---------------------------------------------------------------------------------


def test_backoff_grows_and_caps() -> None:
    backoff = Backoff(initial=0.1, maximum=1.0, multiplier=2.0, jitter=0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 100)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]


def test_backoff_jitter_stays_within_bounds() -> None:
    backoff = Backoff(initial=1.0, maximum=1.0, jitter=0.5)
    delays = [backoff.delay(1) for _ in range(200)]
    assert all(0.5 <= d <= 1.0 for d in delays)
    assert len(set(delays)) > 1


@pytest.mark.parametrize(
    "kwargs", [{"initial": -1}, {"multiplier": 0.5}, {"jitter": 2.0}, {"maximum": -1}]
)
def test_backoff_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        Backoff(**kwargs)


def test_backoff_attempts_are_one_based() -> None:
    with pytest.raises(ValueError, match="1-based"):
        Backoff().delay(0)


# -- envelope --------------------------------------------------------------------------------


def test_new_envelope_fills_every_attribute() -> None:
    when = datetime(2025, 1, 2, 3, 4, 5, 123000, tzinfo=UTC)
    payload = Duration(seconds=5)
    envelope = new_envelope(payload, source="catalog", subject="sku-1", schema_version=2, time=when)
    uuid.UUID(envelope.id)
    assert envelope.type == "google.protobuf.Duration" == event_type_name(Duration)
    assert envelope.source == "catalog"
    assert envelope.subject == "sku-1"
    assert envelope.schema_version == 2
    assert envelope.time.ToDatetime(tzinfo=UTC) == when
    assert unpack_data(envelope, Duration) == payload


def test_new_envelope_validates_inputs() -> None:
    with pytest.raises(ValueError, match="source"):
        new_envelope(Duration(), source="", subject="x")
    with pytest.raises(ValueError, match="subject"):
        new_envelope(Duration(), source="s", subject="")
    with pytest.raises(ValueError, match="timezone"):
        new_envelope(Duration(), source="s", subject="x", time=datetime(2025, 1, 1))


def test_decode_round_trip() -> None:
    envelope = make_envelope()
    assert decode_envelope(envelope.SerializeToString()) == envelope


@pytest.mark.parametrize(
    "value",
    [None, b"", b"\xff\xff\xff", b"not protobuf at all", Timestamp(seconds=5).SerializeToString()],
)
def test_decode_rejects_garbage(value: bytes | None) -> None:
    with pytest.raises(UndecodableMessageError):
        decode_envelope(value)


def test_decode_rejects_type_mismatch() -> None:
    envelope = make_envelope()
    envelope.type = "mercato.orders.events.v1.OrderPaid"
    with pytest.raises(UndecodableMessageError, match="does not match"):
        decode_envelope(envelope.SerializeToString())


def test_unpack_rejects_other_type() -> None:
    with pytest.raises(UndecodableMessageError, match=r"expected google\.protobuf\.Duration"):
        unpack_data(make_envelope(), Duration)


def test_envelope_headers_are_cloudevents_style() -> None:
    envelope = make_envelope(subject="order-9")
    headers = envelope_header_map(envelope)
    assert headers["ce_id"] == envelope.id
    assert headers["ce_type"] == "google.protobuf.Struct"
    assert headers["ce_source"] == "orders"
    assert headers["ce_subject"] == "order-9"
    assert headers["ce_specversion"] == "1.0"
    assert headers["ce_schemaversion"] == "1"
    assert headers["content-type"] == "application/x-protobuf"
    assert headers["ce_time"].endswith("Z")


def test_header_conversions() -> None:
    assert map_to_headers({"a": "1", "b": "é"}) == [("a", b"1"), ("b", "é".encode())]
    assert headers_to_map([("a", b"1"), ("a", b"2"), ("n", None), ("x", b"\xff")]) == {
        "a": "2",
        "n": "",
        "x": "\ufffd",
    }
    assert headers_to_map(None) == {}


def test_trace_context_round_trip() -> None:
    provider = TracerProvider()
    tracer = provider.get_tracer("t")
    assert trace_context_map() == {}  # no active span: nothing to propagate
    with tracer.start_as_current_span("request") as span:
        carrier = trace_context_map()
    trace_id = f"{span.get_span_context().trace_id:032x}"
    assert carrier["traceparent"].split("-")[1] == trace_id


# -- secrets and dead-letter headers -----------------------------------------------------------


def test_dead_letter_error_text_is_redacted_and_truncated() -> None:
    text = error_text(
        "connect postgresql://app:s3cret@db:5432/x failed; password=hunter2 token: abc"
    )
    assert "s3cret" not in text
    assert "hunter2" not in text
    assert "abc" not in text
    assert "postgresql://app:[REDACTED]@db:5432/x" in text
    assert len(error_text("x" * 5000)) == 512


def test_dead_letter_headers_keep_originals_and_add_the_error() -> None:
    # aiokafka may hand out a header without a value (None).
    odd: Any = [("ce_id", b"abc"), ("dlq_attempts", b"9"), ("n", None)]
    record = Record("orders", 3, 42, b"v", headers=odd)
    failed_at = datetime(2025, 1, 1, tzinfo=UTC)
    headers = dead_letter_headers(
        record,
        group_id="analytics",
        error=ValueError("bad password=x"),
        attempts=5,
        failed_at=failed_at,
    )
    as_map = dict(headers)
    assert as_map["ce_id"] == b"abc"
    assert as_map["n"] == b""
    assert as_map["dlq_original_topic"] == b"orders"
    assert as_map["dlq_original_partition"] == b"3"
    assert as_map["dlq_original_offset"] == b"42"
    assert as_map["dlq_consumer_group"] == b"analytics"
    assert as_map["dlq_error_type"] == b"builtins.ValueError"
    assert as_map["dlq_error_message"] == b"bad password=[REDACTED]"
    assert as_map["dlq_attempts"] == b"5"  # the stale header from an earlier DLQ trip is replaced
    assert [name for name, _ in headers].count("dlq_attempts") == 1
    assert as_map["dlq_failed_at"] == failed_at.isoformat().encode()


# -- producer --------------------------------------------------------------------------------


class FakeClient:
    instances: list[FakeClient] = []  # noqa: RUF012

    def __init__(self, *, fail_start: bool = False, hang_stop: bool = False) -> None:
        self.fail_start = fail_start
        self.hang_stop = hang_stop
        self.sent: list[tuple[str, bytes, bytes | None, list[tuple[str, bytes]]]] = []
        self.started = False
        self.stopped = False
        FakeClient.instances.append(self)

    async def start(self) -> None:
        if self.fail_start:
            raise KafkaConnectionError("no broker")
        self.started = True

    async def stop(self) -> None:
        if self.hang_stop:
            await asyncio.sleep(3600)
        self.stopped = True

    async def send(
        self, topic: str, value: bytes, key: bytes | None = None, headers: Any = None
    ) -> asyncio.Future[Any]:
        self.sent.append((topic, value, key, headers))
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        future.set_result(("meta", topic))
        return future


class ScriptedProducer(EventProducer):
    def __init__(self, clients: list[FakeClient], **kwargs: Any) -> None:
        super().__init__("127.0.0.1:1", **kwargs)
        self.clients = clients

    def _new_client(self) -> Any:
        return self.clients.pop(0)


def test_connection_kwargs_hide_password() -> None:
    conn = KafkaConnection(
        bootstrap_servers="b:9092",
        security_protocol="SASL_SSL",
        sasl_plain_username="u",
        sasl_plain_password="pw",
    )
    assert "pw" not in repr(conn)
    kwargs = conn.client_kwargs()
    assert kwargs["sasl_plain_password"] == "pw"
    assert "sasl_mechanism" not in KafkaConnection(bootstrap_servers="b").client_kwargs()


async def test_producer_is_idempotent_with_acks_all() -> None:
    producer = EventProducer("127.0.0.1:1")
    assert producer._options["enable_idempotence"] is True
    assert producer._options["acks"] == "all"


async def test_send_before_start_fails() -> None:
    producer = ScriptedProducer([])
    with pytest.raises(ProducerNotStartedError):
        await producer.send("t", b"v")


async def test_publish_sets_key_and_headers() -> None:
    client = FakeClient()
    producer = ScriptedProducer([client])
    envelope = make_envelope(subject="order-5")
    async with producer:
        await producer.publish("orders", envelope, extra_headers={"x-tenant": "t1"})
    assert client.stopped
    topic, value, key, headers = client.sent[0]
    assert (topic, value, key) == ("orders", envelope.SerializeToString(), b"order-5")
    as_map = headers_to_map(headers)
    assert as_map["ce_id"] == envelope.id
    assert as_map["x-tenant"] == "t1"


async def test_send_traced_sends_in_the_stored_context_without_stale_trace_headers() -> None:
    """The aiokafka instrumentation starts its PRODUCER span in the context current at send and
    injects it; send_traced makes the stored context current and drops the stored headers."""
    provider = TracerProvider()
    seen: list[trace.SpanContext] = []

    class RecordingClient(FakeClient):
        async def send(self, *args: Any, **kwargs: Any) -> asyncio.Future[Any]:
            seen.append(trace.get_current_span().get_span_context())
            return await super().send(*args, **kwargs)

    client = RecordingClient()
    producer = ScriptedProducer([client])
    with provider.get_tracer("t").start_as_current_span("request") as request:
        stored = trace_context_map()
    from mercato_common.kafka import extract_trace_context

    await producer.start()
    future = await producer.send_traced(
        "t",
        b"v",
        key="k",
        headers={**stored, "ce_id": "1"},
        parent=extract_trace_context(stored),
    )
    await future
    expected = request.get_span_context()
    assert [(c.trace_id, c.span_id) for c in seen] == [(expected.trace_id, expected.span_id)]
    assert trace.get_current_span().get_span_context() != request.get_span_context()
    as_map = headers_to_map(client.sent[0][3])
    assert "traceparent" not in as_map
    assert as_map["ce_id"] == "1"
    await producer.stop()


async def test_restart_uses_a_fresh_client_and_survives_a_hanging_stop() -> None:
    first = FakeClient(hang_stop=True)
    second = FakeClient()
    producer = ScriptedProducer([first, second], close_timeout=0.05)
    await producer.start()
    await producer.restart()
    assert producer._producer is second
    await producer.stop()
    assert second.stopped


async def test_failed_start_leaves_the_producer_stopped() -> None:
    producer = ScriptedProducer([FakeClient(fail_start=True), FakeClient()], close_timeout=0.05)
    with pytest.raises(KafkaConnectionError):
        await producer.start()
    assert not producer.started
    await producer.start()
    assert producer.started
    await producer.stop()


# -- consumer runner: one record ------------------------------------------------------------


async def test_handler_gets_decoded_event() -> None:
    seen: list[ConsumedEvent] = []

    async def handler(event: ConsumedEvent) -> None:
        seen.append(event)

    envelope = make_envelope()
    runner = runner_for(handler)
    assert await runner.process(record_for(envelope, offset=4))
    (event,) = seen
    assert event.envelope == envelope
    assert (event.topic, event.partition, event.offset, event.key) == ("orders", 0, 4, b"order-1")
    assert event.event_id == envelope.id
    assert event.headers["ce_type"] == envelope.type
    assert event.attempt == 1
    assert event.unpack(Struct)["n"] == 7


async def test_retries_then_succeeds() -> None:
    attempts: list[int] = []

    async def handler(event: ConsumedEvent) -> None:
        attempts.append(event.attempt)
        if event.attempt < 3:
            raise RuntimeError("transient")

    sink = FakeSink()
    runner = runner_for(handler, sink=sink, max_attempts=5)
    assert await runner.process(record_for(make_envelope()))
    assert attempts == [1, 2, 3]
    assert sink.sent == []


async def test_exhausted_retries_go_to_the_dead_letter_topic() -> None:
    calls = 0

    async def handler(event: ConsumedEvent) -> None:
        nonlocal calls
        calls += 1
        raise RuntimeError("db down at postgresql://u:pw@h/db")

    sink = FakeSink()
    runner = runner_for(handler, sink=sink, max_attempts=3)
    record = record_for(make_envelope(), offset=9)
    assert await runner.process(record)
    assert calls == 3
    ((topic, value, key, headers),) = sink.sent
    assert (topic, value, key) == ("orders.dlq", record.value, record.key)
    as_map = headers_to_map(headers)
    assert as_map["dlq_attempts"] == "3"
    assert as_map["dlq_original_offset"] == "9"
    assert as_map["dlq_error_type"] == "builtins.RuntimeError"
    assert "pw" not in as_map["dlq_error_message"]


async def test_permanent_errors_skip_retries() -> None:
    calls = 0

    async def handler(event: ConsumedEvent) -> None:
        nonlocal calls
        calls += 1
        event.unpack(Duration)  # wrong type: UndecodableMessageError, permanent

    sink = FakeSink()
    runner = runner_for(handler, sink=sink)
    assert await runner.process(record_for(make_envelope()))
    assert calls == 1
    assert headers_to_map(sink.sent[0][3])["dlq_attempts"] == "1"

    async def explicit(event: ConsumedEvent) -> None:
        raise PermanentError("amount is negative")

    sink2 = FakeSink()
    assert await runner_for(explicit, sink=sink2).process(record_for(make_envelope()))
    assert len(sink2.sent) == 1


async def test_undecodable_record_goes_to_dlq_without_calling_the_handler() -> None:
    async def handler(event: ConsumedEvent) -> None:
        raise AssertionError("must not be called")

    sink = FakeSink()
    runner = ConsumerRunner(
        "127.0.0.1:1",
        group_id="g",
        topics=["orders"],
        handler=handler,
        dead_letter_topic=lambda topic: f"{topic}.dead",
        dead_letter_producer=sink,
        registry=CollectorRegistry(),
    )
    assert await runner.process(Record("orders", 0, 1, b"garbage"))
    ((topic, value, _key, headers),) = sink.sent
    assert topic == "orders.dead"
    assert value == b"garbage"
    as_map = headers_to_map(headers)
    assert as_map["dlq_attempts"] == "0"
    assert as_map["dlq_error_type"].endswith("UndecodableMessageError")


async def test_already_processed_hook_skips_the_handler() -> None:
    async def handler(event: ConsumedEvent) -> None:
        raise AssertionError("must not be called")

    async def seen(event: ConsumedEvent) -> bool:
        return True

    runner = runner_for(handler, already_processed=seen)
    assert await runner.process(record_for(make_envelope()))


async def test_no_dead_letter_topic_stops_the_runner() -> None:
    async def handler(event: ConsumedEvent) -> None:
        raise RuntimeError("boom")

    runner = runner_for(handler, dlq=None, max_attempts=2)
    with pytest.raises(HandlerFailedError):
        await runner.process(record_for(make_envelope()))


async def test_dead_letter_publish_is_retried_then_fatal() -> None:
    async def handler(event: ConsumedEvent) -> None:
        raise PermanentError("no")

    flaky = FakeSink(fail_times=2)
    assert await runner_for(handler, sink=flaky, dead_letter_attempts=3).process(
        record_for(make_envelope())
    )
    assert len(flaky.sent) == 1

    dead = FakeSink(fail_times=100)
    with pytest.raises(DeadLetterPublishError):
        await runner_for(handler, sink=dead, dead_letter_attempts=2).process(
            record_for(make_envelope())
        )


def test_runner_validates_its_settings() -> None:
    async def handler(event: ConsumedEvent) -> None:
        return None

    with pytest.raises(ValueError, match="topics"):
        ConsumerRunner("b", group_id="g", topics=[], handler=handler)
    with pytest.raises(ValueError, match="producer"):
        ConsumerRunner("b", group_id="g", topics=["t"], handler=handler, dead_letter_topic="d")
    with pytest.raises(ValueError, match="batch_linger_ms"):
        runner_for(handler, batch_linger_ms=-1)
    runner = runner_for(handler)
    assert runner._consumer_kwargs["enable_auto_commit"] is False
    assert runner._consumer_kwargs["group_id"] == "analytics"


# -- consumer runner: the loop ----------------------------------------------------------------


async def test_run_commits_at_most_once_per_interval_and_on_stop() -> None:
    tp = TopicPartition("orders", 0)
    e = [make_envelope(value=i) for i in range(3)]
    consumer = FakeConsumer([{tp: [record_for(e[i], i)]} for i in range(3)])

    async def handler(event: ConsumedEvent) -> None:
        return None

    runner = runner_for(handler, consumer=consumer, commit_interval=60.0)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    # The first batch at once; the next two within the interval, committed together on stop.
    assert consumer.commits == [{tp: 1}, {tp: 3}]


async def test_an_idle_runner_waits_longer_for_records_and_still_stops_at_once() -> None:
    tp = TopicPartition("orders", 0)
    consumer = FakeConsumer([{tp: [record_for(make_envelope(), 0)]}, {}])

    async def handler(event: ConsumedEvent) -> None:
        return None

    runner = runner_for(handler, consumer=consumer, commit_interval=0, idle_poll_timeout_ms=600_000)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    # A record, then an empty poll with everything committed: the next poll is the idle one.
    assert consumer.timeouts == [10, 10, 600_000]
    # stop() does not wait for the idle poll's ten minutes.
    await asyncio.wait_for(runner.stop(grace=60), 5)
    await asyncio.wait_for(task, 5)
    assert consumer.commits == [{tp: 1}]
    assert consumer.stopped


async def test_run_commits_after_each_batch_and_on_stop() -> None:
    tp0, tp1 = TopicPartition("orders", 0), TopicPartition("orders", 1)
    e = [make_envelope(value=i) for i in range(4)]
    consumer = FakeConsumer(
        [
            {tp0: [record_for(e[0], 0), record_for(e[1], 1)], tp1: [record_for(e[2], 5, 1)]},
            {tp0: [record_for(e[3], 2)]},
        ]
    )
    handled: list[int] = []

    async def handler(event: ConsumedEvent) -> None:
        handled.append(event.offset)

    runner = runner_for(handler, consumer=consumer, commit_interval=0)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    assert handled == [0, 1, 5, 2]
    assert consumer.commits == [{tp0: 2, tp1: 6}, {tp0: 3}]
    assert consumer.started
    assert consumer.stopped
    assert consumer.subscribed == ["orders"]


async def test_prepare_batch_sees_the_decodable_records_of_a_batch_before_the_handler() -> None:
    tp0, tp1 = TopicPartition("orders", 0), TopicPartition("orders", 1)
    e = [make_envelope(value=i) for i in range(3)]
    garbage = Record("orders", 0, 1, b"garbage")
    consumer = FakeConsumer(
        [
            {tp0: [record_for(e[0], 0), garbage], tp1: [record_for(e[1], 7, 1)]},
            {tp0: [record_for(e[2], 2)]},
        ]
    )
    calls: list[tuple[str, list[tuple[int, int]]]] = []

    async def prepare(events: Sequence[ConsumedEvent]) -> None:
        calls.append(("prepare", [(event.partition, event.offset) for event in events]))

    async def handler(event: ConsumedEvent) -> None:
        calls.append(("handle", [(event.partition, event.offset)]))

    sink = FakeSink()
    runner = runner_for(handler, consumer=consumer, sink=sink, prepare_batch=prepare)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    assert calls == [
        ("prepare", [(0, 0), (1, 7)]),  # not the undecodable record: it is dead-lettered
        ("handle", [(0, 0)]),
        ("handle", [(1, 7)]),
        ("prepare", [(0, 2)]),
        ("handle", [(0, 2)]),
    ]
    assert [sent[1] for sent in sink.sent] == [b"garbage"]


async def test_a_failing_prepare_batch_leaves_every_record_to_the_handler() -> None:
    tp = TopicPartition("orders", 0)
    consumer = FakeConsumer(
        [{tp: [record_for(make_envelope(), 0), record_for(make_envelope(), 1)]}]
    )
    handled: list[int] = []

    async def prepare(events: Sequence[ConsumedEvent]) -> None:
        raise ConnectionError("store away")

    async def handler(event: ConsumedEvent) -> None:
        handled.append(event.offset)

    runner = runner_for(handler, consumer=consumer, prepare_batch=prepare, commit_interval=0)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    assert handled == [0, 1]
    assert consumer.commits == [{tp: 2}]


async def test_a_short_batch_lingers_once_for_more_records() -> None:
    tp0, tp1 = TopicPartition("orders", 0), TopicPartition("orders", 1)
    e = [make_envelope(value=i) for i in range(4)]
    consumer = FakeConsumer(
        [
            {tp0: [record_for(e[0], 0)]},
            {tp0: [record_for(e[1], 1)], tp1: [record_for(e[2], 0, 1)]},
            {tp0: [record_for(e[3], 2)]},
        ]
    )
    batches: list[list[tuple[int, int]]] = []

    async def prepare(events: Sequence[ConsumedEvent]) -> None:
        batches.append([(event.partition, event.offset) for event in events])

    async def handler(event: ConsumedEvent) -> None:
        return None

    runner = runner_for(
        handler, consumer=consumer, prepare_batch=prepare, batch_linger_ms=5, commit_interval=0
    )
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    # The first poll and what the linger found make one batch; the third poll lingers and
    # finds nothing more.
    assert batches == [[(0, 0), (0, 1), (1, 0)], [(0, 2)]]
    assert consumer.commits[0] == {tp0: 2, tp1: 1}


async def test_a_full_batch_does_not_linger() -> None:
    tp = TopicPartition("orders", 0)
    consumer = FakeConsumer(
        [
            {tp: [record_for(make_envelope(), 0), record_for(make_envelope(), 1)]},
            {tp: [record_for(make_envelope(), 2)]},
        ]
    )
    batches: list[list[int]] = []

    async def prepare(events: Sequence[ConsumedEvent]) -> None:
        batches.append([event.offset for event in events])

    async def handler(event: ConsumedEvent) -> None:
        return None

    runner = runner_for(
        handler,
        consumer=consumer,
        prepare_batch=prepare,
        batch_linger_ms=5,
        max_poll_records=2,
    )
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    assert batches == [[0, 1], [2]]


async def test_stop_during_backoff_does_not_commit_the_failing_record() -> None:
    tp = TopicPartition("orders", 0)
    consumer = FakeConsumer(
        [{tp: [record_for(make_envelope(), 0), record_for(make_envelope(), 1)]}]
    )
    started = asyncio.Event()

    async def handler(event: ConsumedEvent) -> None:
        if event.offset == 1:
            started.set()
            raise RuntimeError("transient")

    runner = ConsumerRunner(
        "b",
        group_id="g",
        topics=["orders"],
        handler=handler,
        dead_letter_topic="dlq",
        dead_letter_producer=FakeSink(),
        backoff=Backoff(initial=60, maximum=60, jitter=0),
        registry=CollectorRegistry(),
        consumer_factory=lambda: consumer,
    )
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(started.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    # Offset 0 is done and committed; offset 1 was abandoned mid-retry and will be redelivered.
    assert consumer.commits == [{tp: 1}]
    assert consumer.stopped


async def test_revoked_partition_records_are_left_to_the_new_owner() -> None:
    tp0, tp1 = TopicPartition("orders", 0), TopicPartition("orders", 1)
    consumer = FakeConsumer(
        [{tp0: [record_for(make_envelope(), 0)], tp1: [record_for(make_envelope(), 0, 1)]}]
    )
    consumer.assigned = {tp0}
    handled: list[int] = []

    async def handler(event: ConsumedEvent) -> None:
        handled.append(event.partition)

    runner = runner_for(handler, consumer=consumer)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    assert handled == [0]
    assert consumer.commits == [{tp0: 1}]


async def test_commit_failure_keeps_offsets_for_the_next_commit() -> None:
    tp = TopicPartition("orders", 0)
    consumer = FakeConsumer([{tp: [record_for(make_envelope(), 0)]}])
    fail = [True]
    original = consumer.commit

    async def flaky_commit(offsets: dict[TopicPartition, int]) -> None:
        if fail.pop(0) if fail else False:
            raise KafkaError("coordinator away")
        await original(offsets)

    consumer.commit = flaky_commit  # type: ignore[method-assign]

    async def handler(event: ConsumedEvent) -> None:
        return None

    runner = runner_for(handler, consumer=consumer)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    assert consumer.commits == [{tp: 1}]


async def test_a_partition_lost_before_the_commit_does_not_cost_the_others_theirs() -> None:
    """A commit naming a partition no longer assigned fails whole (aiokafka's IllegalStateError):
    the partitions still owned must be committed anyway, or their lag never reaches 0."""
    tp0, tp1 = TopicPartition("orders", 0), TopicPartition("orders", 1)
    consumer = FakeConsumer(
        [{tp0: [record_for(make_envelope(), 0)], tp1: [record_for(make_envelope(), 0, 1)]}]
    )
    original = consumer.commit

    async def strict_commit(offsets: dict[TopicPartition, int]) -> None:
        if not set(offsets) <= consumer.assigned:
            raise IllegalStateError("partition is not assigned")
        await original(offsets)

    consumer.commit = strict_commit  # type: ignore[method-assign]

    async def handler(event: ConsumedEvent) -> None:
        if event.partition == 1:
            consumer.assigned = {tp0}  # a rebalance took partition 1 while it was handled

    runner = runner_for(handler, consumer=consumer)
    task = asyncio.create_task(runner.run())
    await asyncio.wait_for(consumer.exhausted.wait(), 5)
    await runner.stop(grace=5)
    await asyncio.wait_for(task, 5)
    assert consumer.commits == [{tp0: 1}]


async def test_run_raises_on_fatal_errors_after_closing() -> None:
    tp = TopicPartition("orders", 0)
    consumer = FakeConsumer(
        [{tp: [record_for(make_envelope(), 0), record_for(make_envelope(value=666), 1)]}]
    )

    async def handler(event: ConsumedEvent) -> None:
        if event.unpack(Struct)["n"] == 666:
            raise RuntimeError("boom")

    runner = runner_for(handler, consumer=consumer, dlq=None, max_attempts=1)
    with pytest.raises(HandlerFailedError):
        await asyncio.wait_for(runner.run(), 5)
    assert consumer.stopped
    # The record before the failing one is committed; the failing one is not.
    assert consumer.commits == [{tp: 1}]


async def test_revoked_partitions_lose_their_lag_series() -> None:
    from mercato_common.kafka.consumer import _Listener

    runner = runner_for(lambda event: None)
    metrics = runner._metrics
    for partition in (0, 1):
        metrics.lag.labels("analytics", "orders", str(partition)).set(7)
    await _Listener(runner).on_partitions_revoked([TopicPartition("orders", 0)])
    samples = {
        sample.labels["partition"]: sample.value
        for family in metrics.lag.collect()
        for sample in family.samples
    }
    assert samples == {"1": 7}
