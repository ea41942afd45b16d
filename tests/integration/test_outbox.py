"""The PostgreSQL outbox against real PostgreSQL and Kafka: exactly the committed rows, no loss.

The kill -9 test runs last (it uses the ``stack_faults`` fixture, see conftest.py).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncIterator, Callable
from datetime import timedelta
from typing import Any

import asyncpg
import pytest
import pytest_asyncio
from aiokafka import AIOKafkaConsumer
from google.protobuf.struct_pb2 import Struct
from prometheus_client import CollectorRegistry

from mercato_common.kafka import Backoff, EventProducer, headers_to_map, new_envelope
from mercato_common.migrations import Migration, migrate
from mercato_common.outbox import PostgresOutboxRelay, enqueue, enqueue_many, outbox_ddl
from mercato_devstack import Stack
from mercato_devstack.testing import TopicFactory

pytestmark = pytest.mark.integration

log = logging.getLogger(__name__)


class Rollback(Exception):
    pass


@pytest_asyncio.fixture(loop_scope="session")
async def pool(postgres_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await asyncpg.create_pool(postgres_dsn, min_size=2, max_size=12)
    async with pool.acquire() as conn:
        await migrate(
            conn,
            [
                Migration.from_sql(1, "outbox", outbox_ddl()),
                Migration.from_sql(
                    2, "orders", "CREATE TABLE orders (id text PRIMARY KEY, n int NOT NULL);"
                ),
            ],
        )
    try:
        yield pool
    finally:
        await pool.close()


def event(order_id: str, n: int) -> Any:
    data = Struct()
    data.update({"order": order_id, "n": n})
    return new_envelope(data, source="orders", subject=order_id)


async def write_orders(
    pool: asyncpg.Pool,
    topic: str,
    *,
    writer: int,
    count: int,
    committed: list[str],
    rolled_back: list[str],
    pause: float = 0.0,
    keep_going: Callable[[], bool] | None = None,
) -> None:
    """Transactions that change state and enqueue events; every fourth one rolls back."""
    i = 0
    while (keep_going() if keep_going else i < count) and i < 100_000:
        order_id = f"w{writer}-o{i % 7}"
        envelopes = [event(order_id, i), event(order_id, i)] if i % 3 == 0 else [event(order_id, i)]
        try:
            async with pool.acquire() as conn, conn.transaction():
                await conn.execute(
                    "INSERT INTO orders VALUES ($1, 1) "
                    "ON CONFLICT (id) DO UPDATE SET n = orders.n + 1",
                    order_id,
                )
                if len(envelopes) == 1:
                    await enqueue(conn, envelopes[0], topic)
                else:
                    await enqueue_many(conn, [(e, topic) for e in envelopes])
                if i % 4 == 3:
                    raise Rollback
        except Rollback:
            rolled_back.extend(e.id for e in envelopes)
        else:
            committed.extend(e.id for e in envelopes)
        i += 1
        if pause:
            await asyncio.sleep(pause)


async def wait_until_all_sent(pool: asyncpg.Pool, within: float) -> None:
    async with asyncio.timeout(within):
        while True:
            if not await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL"):
                return
            await asyncio.sleep(0.1)


async def read_ids(bootstrap: str, topic: str, expected: set[str], within: float) -> list[Any]:
    """Records of ``topic`` from the start until every id of ``expected`` is seen, then a
    little more so that stray extra records would show up too."""
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    records: list[Any] = []
    seen: set[str] = set()
    try:
        async with asyncio.timeout(within):
            while not expected <= seen:
                batch = await consumer.getmany(timeout_ms=500)
                for msgs in batch.values():
                    for record in msgs:
                        records.append(record)
                        seen.add(headers_to_map(record.headers)["ce_id"])
        for msgs in (await consumer.getmany(timeout_ms=1000)).values():
            records.extend(msgs)
    finally:
        await consumer.stop()
    return records


def relay(pool: asyncpg.Pool, producer: EventProducer, **kwargs: Any) -> PostgresOutboxRelay:
    kwargs.setdefault("registry", CollectorRegistry())
    kwargs.setdefault("poll_interval", 0.2)
    kwargs.setdefault("backoff", Backoff(initial=0.05, maximum=0.5))
    return PostgresOutboxRelay(pool, producer, batch_size=25, **kwargs)


@pytest.mark.parametrize("exclusive", [True, False], ids=["exclusive", "parallel"])
async def test_two_relays_publish_exactly_the_committed_rows(
    pool: asyncpg.Pool, kafka_bootstrap: str, kafka_topics: TopicFactory, exclusive: bool
) -> None:
    topic = await kafka_topics.create("orders", partitions=3)
    committed: list[str] = []
    rolled_back: list[str] = []
    producers = [EventProducer(kafka_bootstrap) for _ in range(2)]
    relays = [relay(pool, p, exclusive=exclusive) for p in producers]
    for producer in producers:
        await producer.start()
    tasks = [asyncio.create_task(r.run()) for r in relays]
    try:
        await asyncio.gather(
            *(
                write_orders(
                    pool, topic, writer=w, count=40, committed=committed, rolled_back=rolled_back
                )
                for w in range(4)
            )
        )
        await wait_until_all_sent(pool, within=60)
        records = await read_ids(kafka_bootstrap, topic, set(committed), within=60)
    finally:
        for r in relays:
            await r.stop(grace=10)
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        for producer in producers:
            await producer.stop()

    ids = [headers_to_map(record.headers)["ce_id"] for record in records]
    assert rolled_back
    assert set(ids) == set(committed)  # every committed row, and nothing rolled back
    assert not set(ids) & set(rolled_back)
    # Both relays took part (or stood by, in exclusive mode) and the table agrees.
    assert await pool.fetchval("SELECT count(*) FROM outbox") == len(committed)
    if exclusive:
        # One publisher at a time: per aggregate, Kafka order is the commit (seq) order.
        order = await pool.fetch("SELECT id::text, key FROM outbox ORDER BY seq")
        expected: dict[str, list[str]] = {}
        for row in order:
            expected.setdefault(row["key"], []).append(row["id"])
        actual: dict[str, list[str]] = {}
        for record in records:
            key = record.key.decode()
            event_id = headers_to_map(record.headers)["ce_id"]
            if event_id not in actual.setdefault(key, []):
                actual[key].append(event_id)
        assert actual == expected


async def test_listen_notify_wakes_the_relay_and_housekeeping_cleans_up(
    pool: asyncpg.Pool, kafka_bootstrap: str, kafka_topics: TopicFactory
) -> None:
    topic = await kafka_topics.create("notify")
    registry = CollectorRegistry()
    async with EventProducer(kafka_bootstrap) as producer:
        # Polling every 60 s: only the NOTIFY of the insert can make it publish promptly.
        r = relay(
            pool,
            producer,
            poll_interval=60,
            registry=registry,
            retention=timedelta(0),
            housekeeping_interval=3600,
        )
        task = asyncio.create_task(r.run())
        try:
            await asyncio.sleep(0.5)  # the relay's first (empty) cycle and its LISTEN
            committed: list[str] = []
            await write_orders(pool, topic, writer=0, count=3, committed=committed, rolled_back=[])
            started = time.monotonic()
            await wait_until_all_sent(pool, within=10)
            assert time.monotonic() - started < 5
        finally:
            await r.stop(grace=10)
            await asyncio.wait_for(task, 15)

        labels = {"outbox": "outbox"}
        published = registry.get_sample_value(
            "mercato_outbox_published_total", {**labels, "topic": topic}
        )
        assert published == len(committed)

        # Backlog gauges: one unsent row, then none.
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, event("late", 1), topic)
        await r.refresh_metrics()
        assert registry.get_sample_value("mercato_outbox_backlog", labels) == 1
        age = registry.get_sample_value("mercato_outbox_oldest_unsent_age_seconds", labels)
        assert age is not None
        assert 0 <= age < 30
        assert await r.run_once() == 1
        await r.refresh_metrics()
        assert registry.get_sample_value("mercato_outbox_backlog", labels) == 0
        assert registry.get_sample_value("mercato_outbox_oldest_unsent_age_seconds", labels) == 0

        # Cleanup removes sent rows (retention 0 here), never unsent ones.
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, event("pending", 1), topic)
        assert await r.cleanup() == len(committed) + 1
        assert await pool.fetchval("SELECT count(*) FROM outbox") == 1
        assert await pool.fetchval("SELECT key FROM outbox") == "pending"


async def test_an_exclusive_relay_stands_by_while_another_holds_the_turn(
    pool: asyncpg.Pool, kafka_bootstrap: str, kafka_topics: TopicFactory
) -> None:
    """The turn (the advisory lock its SELECT takes) held elsewhere: the relay publishes
    nothing and leaves the rows unsent; once the turn is free, it publishes them."""
    topic = await kafka_topics.create("orders-turn")
    producer = EventProducer(kafka_bootstrap)
    await producer.start()
    try:
        r = relay(pool, producer)
        async with pool.acquire() as conn, conn.transaction():
            await enqueue(conn, event("turn", 1), topic)
        async with pool.acquire() as other, other.transaction():
            await other.execute("SELECT pg_advisory_xact_lock($1)", r._lock_key)
            assert await r.run_once() == 0
            assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 1
        assert await r.run_once() == 1
        assert await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL") == 0
    finally:
        await producer.stop()


async def test_relay_keeps_publishing_through_a_kafka_kill9(
    stack_faults: Stack,
    pool: asyncpg.Pool,
    kafka_bootstrap: str,
    kafka_topics: TopicFactory,
) -> None:
    topic = await kafka_topics.create("crash", partitions=3)
    committed: list[str] = []
    rolled_back: list[str] = []
    writing = True
    producer = EventProducer(kafka_bootstrap, request_timeout_ms=3_000, close_timeout=2.0)
    await producer.start()
    r = relay(pool, producer, publish_timeout=4.0, backoff=Backoff(initial=0.1, maximum=1.0))
    relay_task = asyncio.create_task(r.run())
    writers = [
        asyncio.create_task(
            write_orders(
                pool,
                topic,
                writer=w,
                count=0,
                committed=committed,
                rolled_back=rolled_back,
                pause=0.02 + random.random() / 100,
                keep_going=lambda: writing,
            )
        )
        for w in range(2)
    ]
    try:
        await asyncio.sleep(1.5)
        before_kill = len(committed)
        sent_before_kill = await pool.fetchval(
            "SELECT count(*) FROM outbox WHERE sent_at IS NOT NULL"
        )
        # The stack's hooks block, so they run in a thread: writers and relay keep going.
        await asyncio.to_thread(stack_faults.kill, "kafka")
        killed_at = time.monotonic()
        await asyncio.sleep(3)
        stuck = await pool.fetchval("SELECT count(*) FROM outbox WHERE sent_at IS NULL")
        await asyncio.to_thread(stack_faults.start, "kafka")
        log.info("kafka was down for %.1fs", time.monotonic() - killed_at)
        await asyncio.sleep(1.5)
        writing = False
        await asyncio.wait_for(asyncio.gather(*writers), 10)
        await wait_until_all_sent(pool, within=90)
    finally:
        writing = False
        await r.stop(grace=10)
        await asyncio.wait_for(relay_task, 15)
        await producer.stop()

    assert before_kill > 0
    assert sent_before_kill > 0
    assert stuck > 0  # events piled up while the broker was dead
    assert r.consecutive_failures == 0
    records = await read_ids(kafka_bootstrap, topic, set(committed), within=60)
    ids = [headers_to_map(record.headers)["ce_id"] for record in records]
    assert set(ids) == set(committed)  # nothing lost; duplicates allowed
    log.info("%d committed events, %d records on the topic", len(committed), len(ids))
