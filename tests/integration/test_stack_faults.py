"""Fault hooks of the local stack: kill -9 or stop a component, start it, find the data again.

These run last (see conftest.py) and only against the local stack.
"""

from __future__ import annotations

import asyncio

import asyncpg
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from pymongo import AsyncMongoClient
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError

from mercato_devstack import Stack
from mercato_devstack.testing import TopicFactory

pytestmark = pytest.mark.integration


async def test_postgres_committed_row_survives_kill9(
    stack_faults: Stack, postgres_dsn: str
) -> None:
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await conn.execute("CREATE TABLE ledger (id int PRIMARY KEY, note text)")
        await conn.execute("INSERT INTO ledger VALUES (1, 'committed before the crash')")
    finally:
        await conn.close()

    stack_faults.kill("postgres")
    assert not stack_faults.component("postgres").status().healthy
    with pytest.raises(ConnectionRefusedError):
        await asyncpg.connect(postgres_dsn, timeout=2)

    stack_faults.start("postgres")
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert (
            await conn.fetchval("SELECT note FROM ledger WHERE id = 1")
            == "committed before the crash"
        )
    finally:
        await conn.close()


async def test_redis_key_survives_kill9(
    stack_faults: Stack, redis_url: str, redis_prefix: str
) -> None:
    key = f"{redis_prefix}survivor"
    # The pooled connection dies with the server: retrying on ConnectionError reconnects.
    client = Redis.from_url(
        redis_url,
        retry=Retry(ExponentialBackoff(cap=1.0, base=0.05), retries=3),
        retry_on_error=[RedisConnectionError],
    )
    try:
        await client.set(key, "still here")
        stack_faults.kill("redis")
        stack_faults.start("redis")
        assert await client.get(key) == b"still here"
    finally:
        await client.aclose()


async def test_kafka_acknowledged_messages_survive_kill9(
    stack_faults: Stack, kafka_bootstrap: str, kafka_topics: TopicFactory
) -> None:
    topic = await kafka_topics.create("crash")
    producer = AIOKafkaProducer(
        bootstrap_servers=kafka_bootstrap, acks="all", enable_idempotence=True
    )
    await producer.start()
    try:
        for i in range(5):
            await producer.send_and_wait(topic, f"m{i}".encode(), key=b"k")
    finally:
        await producer.stop()

    stack_faults.kill("kafka")
    stack_faults.start("kafka")

    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        values: list[bytes] = []
        async with asyncio.timeout(30):
            while len(values) < 5:
                batch = await consumer.getmany(timeout_ms=1000)
                values.extend(msg.value for msgs in batch.values() for msg in msgs if msg.value)
    finally:
        await consumer.stop()
    assert values == [f"m{i}".encode() for i in range(5)]


async def test_ferretdb_restart_keeps_documents(
    stack_faults: Stack, mongo_uri: str, mongo_db_name: str
) -> None:
    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(
        mongo_uri, serverSelectionTimeoutMS=10_000
    )
    try:
        await client[mongo_db_name]["things"].insert_one({"_id": "x", "n": 1})
        stack_faults.restart("ferretdb")
        stack_faults.kill("ferretdb")
        stack_faults.start("ferretdb")
        assert await client[mongo_db_name]["things"].find_one({"_id": "x"}) == {"_id": "x", "n": 1}
    finally:
        await client.close()


def test_status_reports_a_stopped_component(stack_faults: Stack) -> None:
    stack_faults.stop("redis")
    status = {st.name: st for st in stack_faults.status()}
    assert not status["redis"].healthy
    assert status["redis"].pid is None
    assert status["postgres"].healthy
    stack_faults.start("redis")
    assert all(st.healthy for st in stack_faults.status())
