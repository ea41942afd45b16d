"""Unit tests of mercato_common.kafka.ConsumerGroup: runners, restarts, dead letters, stop."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.errors import KafkaConnectionError
from google.protobuf.struct_pb2 import Struct
from prometheus_client import CollectorRegistry

from mercato_common.kafka import (
    Backoff,
    ConsumedEvent,
    ConsumerGroup,
    DeadLetterSink,
    KafkaConnection,
    PermanentError,
    envelope_header_map,
    map_to_headers,
    new_envelope,
)

TP = TopicPartition("orders", 0)


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes
    key: bytes | None = b"order-1"
    headers: Sequence[tuple[str, bytes]] = ()
    timestamp: int = 1_700_000_000_000


def record(offset: int) -> Record:
    payload = Struct()
    payload.update({"n": offset})
    envelope = new_envelope(payload, source="orders", subject="order-1")
    headers = map_to_headers(envelope_header_map(envelope))
    return Record("orders", 0, offset, envelope.SerializeToString(), headers=headers)


class FakeConsumer:
    """Enough of AIOKafkaConsumer: one scripted batch, recorded commits; start may fail."""

    def __init__(self, records: list[Record], *, fail_start: bool = False) -> None:
        self.batches = [{TP: records}] if records else []
        self.fail_start = fail_start
        self.commits: list[dict[TopicPartition, int]] = []
        self.stopped = False

    def subscribe(self, topics: list[str], listener: Any = None) -> None:
        return None

    async def start(self) -> None:
        if self.fail_start:
            raise KafkaConnectionError("broker away")

    async def stop(self) -> None:
        self.stopped = True

    async def getmany(self, timeout_ms: int = 0, max_records: int | None = None) -> Any:
        if self.batches:
            return self.batches.pop(0)
        await asyncio.sleep(timeout_ms / 1000)
        return {}

    async def commit(self, offsets: dict[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def highwater(self, tp: TopicPartition) -> int | None:
        return None


@dataclass
class FakeProducer:
    """The dead-letter producer: counts starts and stops, records what it sends."""

    starts: int = 0
    stopped: bool = False
    sent: list[tuple[str, bytes]] = field(default_factory=list)

    async def start(self) -> None:
        self.starts += 1

    async def stop(self) -> None:
        self.stopped = True

    async def send_and_wait(self, topic: str, value: bytes, **_: Any) -> None:
        self.sent.append((topic, value))


def group_for(
    handler: Any, consumers: list[FakeConsumer], producer: FakeProducer, **kwargs: Any
) -> ConsumerGroup:
    made = iter(consumers)
    return ConsumerGroup(
        KafkaConnection(bootstrap_servers="127.0.0.1:1"),
        group_id="g",
        topics=["orders"],
        handler=handler,
        dead_letter_topic="orders.dlq",
        producer=producer,  # type: ignore[arg-type]
        backoff=Backoff(initial=0.01, maximum=0.01, jitter=0),
        registry=CollectorRegistry(),
        consumer_factory=lambda: next(made),
        poll_timeout_ms=10,
        **kwargs,
    )


async def wait_until(condition: Any, within: float = 5.0) -> None:
    for _ in range(int(within / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_runs_count_runners_and_stops_them_with_the_producer() -> None:
    consumers = [FakeConsumer([record(0), record(1)]), FakeConsumer([record(2)])]
    producer = FakeProducer()
    handled: list[int] = []

    async def handler(event: ConsumedEvent) -> None:
        handled.append(event.offset)

    group = group_for(handler, consumers, producer, count=2)
    assert group.producer is producer
    await group.start()
    await wait_until(lambda: len(handled) == 3)
    await group.stop()
    assert sorted(handled) == [0, 1, 2]
    assert [c.commits for c in consumers] == [[{TP: 2}], [{TP: 3}]]
    assert all(c.stopped for c in consumers)
    assert producer.stopped


async def test_a_failed_runner_is_replaced_after_a_backoff() -> None:
    broken, working = FakeConsumer([], fail_start=True), FakeConsumer([record(0)])
    producer = FakeProducer()
    handled: list[int] = []

    async def handler(event: ConsumedEvent) -> None:
        handled.append(event.offset)

    group = group_for(handler, [broken, working], producer)
    await group.start()
    first = group.runners[0]
    await wait_until(lambda: handled == [0])
    assert group.runners[0] is not first
    await group.stop()
    assert working.commits == [{TP: 1}]
    assert producer.starts >= 2  # the producer is (re)started before each runner


async def test_dead_letters_go_through_the_wrapped_producer() -> None:
    producer = FakeProducer()
    wrapped: list[str] = []

    class Counting:
        def __init__(self, sink: DeadLetterSink) -> None:
            self._sink = sink

        async def send_and_wait(self, topic: str, value: bytes, **kwargs: Any) -> Any:
            wrapped.append(topic)
            return await self._sink.send_and_wait(topic, value, **kwargs)

    async def handler(event: ConsumedEvent) -> None:
        raise PermanentError("never")

    stopped: list[bool] = []
    group = group_for(
        handler,
        [FakeConsumer([record(0)])],
        producer,
        wrap_dead_letters=Counting,
        on_stop=lambda: stopped.append(True),
    )
    await group.start()
    await wait_until(lambda: len(producer.sent) == 1)
    await group.stop()
    assert wrapped == ["orders.dlq"]
    assert producer.sent[0][0] == "orders.dlq"
    assert stopped == [True]


async def test_without_a_dead_letter_topic_there_is_no_producer() -> None:
    group = ConsumerGroup(
        KafkaConnection(bootstrap_servers="127.0.0.1:1"),
        group_id="g",
        topics=["orders"],
        handler=lambda event: asyncio.sleep(0),
        registry=CollectorRegistry(),
    )
    assert group.producer is None


def test_validates_its_settings() -> None:
    connection = KafkaConnection(bootstrap_servers="127.0.0.1:1")
    with pytest.raises(ValueError, match="count"):
        ConsumerGroup(connection, group_id="g", topics=["t"], handler=print, count=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="topics"):
        ConsumerGroup(connection, group_id="g", topics=[], handler=print)  # type: ignore[arg-type]


async def test_start_refuses_settings_a_runner_refuses() -> None:
    group = ConsumerGroup(
        KafkaConnection(bootstrap_servers="127.0.0.1:1"),
        group_id="g",
        topics=["t"],
        handler=lambda event: asyncio.sleep(0),
        max_attempts=0,
        registry=CollectorRegistry(),
    )
    with pytest.raises(ValueError, match="attempts"):
        await group.start()
