"""The libs/common Kafka helpers against the real broker: publish, consume, retry, dead-letter."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from google.protobuf.struct_pb2 import Struct
from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client import CollectorRegistry

from mercato_common.kafka import (
    Backoff,
    ConsumedEvent,
    ConsumerRunner,
    EventProducer,
    PermanentError,
    decode_envelope,
    headers_to_map,
    new_envelope,
)
from mercato_devstack.testing import TopicFactory

pytestmark = pytest.mark.integration


async def poll(check: Callable[[], Any], *, within: float, interval: float = 0.05) -> None:
    """Wait (bounded by ``within`` seconds) until ``check()`` (sync or async) is truthy."""
    async with asyncio.timeout(within):
        while True:
            result = check()
            if inspect.isawaitable(result):
                result = await result
            if result:
                return
            await asyncio.sleep(interval)


def payload(**values: Any) -> Struct:
    message = Struct()
    message.update(values)
    return message


async def read_topic(
    bootstrap: str,
    topic: str,
    *,
    until: Callable[[list[Any]], bool],
    within: float = 30.0,
) -> list[Any]:
    """Every record of ``topic`` from the beginning, until ``until(records)`` (bounded)."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    try:
        async with asyncio.timeout(within):
            while not until(records):
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    records.extend(msgs)
    finally:
        await consumer.stop()
    return records


async def test_publish_consume_retry_and_dead_letter(
    kafka_bootstrap: str, kafka_topics: TopicFactory
) -> None:
    topic = await kafka_topics.create("events", partitions=3)
    dlq = await kafka_topics.create("dlq")
    group = kafka_topics.name("consumer")

    exporter = InMemorySpanExporter()
    tracing = TracerProvider()
    tracing.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = tracing.get_tracer("test")

    good = [
        new_envelope(payload(n=i), source="orders", subject=f"order-{i % 4}") for i in range(12)
    ]
    flaky = new_envelope(payload(flaky=True), source="orders", subject="order-flaky")
    poison = new_envelope(payload(poison=True), source="orders", subject="order-poison")

    # The PRODUCER spans and the trace headers come from OpenTelemetry's aiokafka
    # instrumentation, as in a service that exports traces (mercato_common.telemetry).
    instrumentor = AIOKafkaInstrumentor()
    instrumentor.instrument(tracer_provider=tracing)
    producer = EventProducer(kafka_bootstrap, request_timeout_ms=10_000)
    await producer.start()
    try:
        with tracer.start_as_current_span("request"):
            for envelope in [*good[:6], flaky, poison, *good[6:]]:
                await producer.publish(topic, envelope)
        # A value that is no envelope at all: straight to the dead-letter topic.
        await producer.send_and_wait(topic, b"\x00garbage", key=b"order-0")

        applied: dict[str, int] = {}
        attempts: dict[str, int] = {}
        consumer_spans_parent: set[int] = set()
        expected_effects = len(good) + 1  # the good ones and the flaky one

        async def handler(event: ConsumedEvent) -> None:
            data = event.unpack(Struct)
            attempts[event.event_id] = event.attempt
            if "poison" in data:
                raise RuntimeError("cannot apply this one, password=hunter2")
            if "flaky" in data and event.attempt < 3:
                raise ConnectionError("database briefly away")
            if "never" in data:
                raise PermanentError("unreachable")
            # The idempotent effect: keyed by event id.
            applied[event.event_id] = applied.get(event.event_id, 0) + 1

        runner = ConsumerRunner(
            kafka_bootstrap,
            group_id=group,
            topics=[topic],
            handler=handler,
            dead_letter_topic=dlq,
            dead_letter_producer=producer,
            max_attempts=4,
            backoff=Backoff(initial=0.05, maximum=0.2),
            registry=CollectorRegistry(),
            tracer_provider=tracing,
            poll_timeout_ms=200,
        )
        task = asyncio.create_task(runner.run())
        try:
            await poll(lambda: len(applied) >= expected_effects, within=60)
            dead = await read_topic(kafka_bootstrap, dlq, until=lambda r: len(r) >= 2)
        finally:
            await runner.stop(grace=15)
            await asyncio.wait_for(task, 15)
    finally:
        await producer.stop()
        instrumentor.uninstrument()

    # Every good event was applied exactly once; the flaky one on its third attempt.
    assert set(applied) == {e.id for e in good} | {flaky.id}
    assert set(applied.values()) == {1}
    assert attempts[flaky.id] == 3
    assert attempts[poison.id] == 4

    # The dead-letter topic holds the poison event (after 4 attempts) and the garbage (at once).
    by_value = {record.value: record for record in dead}
    poisoned = by_value[poison.SerializeToString()]
    assert poisoned.key == b"order-poison"
    headers = headers_to_map(poisoned.headers)
    assert headers["ce_id"] == poison.id
    assert headers["dlq_original_topic"] == topic
    assert headers["dlq_attempts"] == "4"
    assert headers["dlq_consumer_group"] == group
    assert headers["dlq_error_type"] == "builtins.RuntimeError"
    assert "hunter2" not in headers["dlq_error_message"]
    assert int(headers["dlq_original_offset"]) >= 0
    garbage = headers_to_map(by_value[b"\x00garbage"].headers)
    assert garbage["dlq_attempts"] == "0"
    assert garbage["dlq_error_type"].endswith("UndecodableMessageError")

    # The envelope and the trace context travel in headers; keys keep aggregates on one partition.
    records = await read_topic(kafka_bootstrap, topic, until=lambda r: len(r) >= 15)
    partitions: dict[bytes, set[int]] = {}
    for record in records:
        partitions.setdefault(record.key, set()).add(record.partition)
        if record.value == b"\x00garbage":
            continue
        envelope = decode_envelope(record.value)
        headers = headers_to_map(record.headers)
        assert record.key == envelope.subject.encode()
        assert headers["ce_id"] == envelope.id
        assert headers["ce_type"] == "google.protobuf.Struct"
        assert headers["ce_source"] == "orders"
        assert headers["content-type"] == "application/x-protobuf"
        assert headers["traceparent"].startswith("00-")
    assert all(len(parts) == 1 for parts in partitions.values())

    # One trace: request -> send (PRODUCER) -> process (CONSUMER).
    spans = exporter.get_finished_spans()
    request = next(s for s in spans if s.name == "request")
    sends = {s.context.span_id: s for s in spans if s.kind is SpanKind.PRODUCER}
    processes = [s for s in spans if s.kind is SpanKind.CONSUMER and s.name.startswith("process ")]
    assert processes
    for span in processes:
        consumer_spans_parent.add(span.parent.span_id if span.parent else 0)
        assert span.context.trace_id == request.context.trace_id
    assert consumer_spans_parent <= set(sends)

    # Offsets were committed after the effects: a new member of the group starts at the end.
    check = AIOKafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group)
    await check.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(3)]
        ends = await check.end_offsets(tps)
        for tp in tps:
            assert await check.committed(tp) == ends[tp]
    finally:
        await check.stop()


async def test_a_restarted_consumer_resumes_after_the_last_commit(
    kafka_bootstrap: str, kafka_topics: TopicFactory
) -> None:
    topic = await kafka_topics.create("resume")
    group = kafka_topics.name("resume-group")
    envelopes = [new_envelope(payload(n=i), source="t", subject="agg") for i in range(10)]
    seen: list[str] = []

    async def handler(event: ConsumedEvent) -> None:
        seen.append(event.event_id)

    async with EventProducer(kafka_bootstrap) as producer:
        for envelope in envelopes[:5]:
            await producer.publish(topic, envelope)

        def runner() -> ConsumerRunner:
            return ConsumerRunner(
                kafka_bootstrap,
                group_id=group,
                topics=[topic],
                handler=handler,
                registry=CollectorRegistry(),
                poll_timeout_ms=200,
            )

        first = runner()
        task = asyncio.create_task(first.run())
        await poll(lambda: len(seen) >= 5, within=30)
        await first.stop(grace=10)
        await asyncio.wait_for(task, 10)

        for envelope in envelopes[5:]:
            await producer.publish(topic, envelope)
        second = runner()
        task = asyncio.create_task(second.run())
        try:
            await poll(lambda: len(seen) >= 10, within=30)
        finally:
            await second.stop(grace=10)
            await asyncio.wait_for(task, 10)

    # In order, and nothing handled twice: the stop committed what was done.
    assert seen == [e.id for e in envelopes]
