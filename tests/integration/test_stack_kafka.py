"""Kafka round trips with raw aiokafka against the real broker."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from mercato_devstack.testing import Backends, TopicFactory, declared_topics

pytestmark = pytest.mark.integration


async def test_produce_and_consume_with_key_and_headers(
    kafka_bootstrap: str, kafka_topics: TopicFactory
) -> None:
    topic = await kafka_topics.create("roundtrip", partitions=3)
    headers = [
        ("traceparent", b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ("ce_type", b"mercato.orders.events.v1.OrderPlaced"),
        ("ce_id", uuid.uuid4().bytes),
    ]
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        sent = [
            await producer.send_and_wait(
                topic, value=f"event-{i}".encode(), key=b"order-42", headers=headers
            )
            for i in range(3)
        ]
    finally:
        await producer.stop()
    # Same key, same partition, offsets in order.
    assert len({meta.partition for meta in sent}) == 1
    assert [meta.offset for meta in sent] == sorted(meta.offset for meta in sent)

    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{kafka_topics.prefix}consumer",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        received = []
        async with asyncio.timeout(30):
            while len(received) < 3:
                batch = await consumer.getmany(timeout_ms=1000)
                for messages in batch.values():
                    received.extend(messages)
        await consumer.commit()
        partition = TopicPartition(topic, sent[0].partition)
        assert await consumer.committed(partition) == sent[-1].offset + 1
    finally:
        await consumer.stop()
    assert [msg.value for msg in received] == [b"event-0", b"event-1", b"event-2"]
    for msg in received:
        assert msg.key == b"order-42"
        assert list(msg.headers) == headers


async def test_declared_topics_can_be_created_under_a_prefix(
    kafka_bootstrap: str, kafka_topics: TopicFactory
) -> None:
    names = await kafka_topics.create_declared()
    declared = {spec.name: spec for spec in declared_topics()}
    assert {name.removeprefix(kafka_topics.prefix) for name in names} == set(declared)
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        described = {t["topic"]: t for t in await admin.describe_topics(names)}
    finally:
        await admin.close()
    for name in names:
        spec = declared[name.removeprefix(kafka_topics.prefix)]
        assert len(described[name]["partitions"]) == spec.partitions


async def test_local_stack_created_the_declared_topics(
    backends: Backends, kafka_bootstrap: str
) -> None:
    if backends.sources["kafka"] == "env":
        pytest.skip("an external Kafka is not managed by the stack")
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
    finally:
        await admin.close()
    assert {spec.name for spec in declared_topics()} <= existing
