"""Saturation metrics without services: the lag probe, the collector and the producer count."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from mercato_common.kafka import EventProducer
from mercato_common.mongo import MongoPoolMonitor
from mercato_common.saturation import SaturationMetrics


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


async def test_a_blocked_loop_shows_up_as_lag() -> None:
    registry = CollectorRegistry()
    saturation = SaturationMetrics(registry, lag_interval=0.05)
    await saturation.start()
    try:
        await asyncio.sleep(0.2)  # a few quiet ticks
        quiet = _value(registry, "mercato_event_loop_lag_seconds_count") or 0
        assert quiet >= 2
        assert _value(registry, "mercato_event_loop_lag_seconds_bucket", le="0.25") == quiet
        time.sleep(0.4)  # noqa: ASYNC251 - blocking the loop is the point
        await asyncio.sleep(0.15)
    finally:
        await saturation.stop()
    count = _value(registry, "mercato_event_loop_lag_seconds_count") or 0
    slow = count - (_value(registry, "mercato_event_loop_lag_seconds_bucket", le="0.25") or 0)
    assert slow == 1  # exactly the tick that waited behind the blocking call
    assert (_value(registry, "mercato_event_loop_lag_seconds_sum") or 0) >= 0.3
    await saturation.stop()  # a second stop is a no-op


class Pool:
    """asyncpg's pool interface as far as the collector reads it."""

    def __init__(self, size: int, idle: int, maximum: int) -> None:
        self.size, self.idle, self.maximum = size, idle, maximum

    def get_size(self) -> int:
        return self.size

    def get_idle_size(self) -> int:
        return self.idle

    def get_max_size(self) -> int:
        return self.maximum


def test_pools_are_read_at_scrape_time_and_skipped_until_started() -> None:
    registry = CollectorRegistry()
    saturation = SaturationMetrics(registry)
    current: list[Pool] = []

    def pool() -> Pool:
        if not current:
            raise RuntimeError("the database is not started")
        return current[0]

    saturation.watch_postgres("postgres", pool)
    assert _value(registry, "mercato_db_pool_max_connections", pool="postgres") is None
    current.append(Pool(size=5, idle=2, maximum=10))
    assert _value(registry, "mercato_db_pool_connections", pool="postgres", state="used") == 3
    assert _value(registry, "mercato_db_pool_connections", pool="postgres", state="idle") == 2
    assert _value(registry, "mercato_db_pool_max_connections", pool="postgres") == 10
    current[0].idle = 5
    assert _value(registry, "mercato_db_pool_connections", pool="postgres", state="used") == 0


def test_mongo_pool_is_counted_from_pool_events() -> None:
    registry = CollectorRegistry()
    saturation = SaturationMetrics(registry)
    monitor = MongoPoolMonitor()
    saturation.watch_mongo("mongodb", monitor, 100)
    event: Any = None
    for _ in range(3):
        monitor.connection_created(event)
    monitor.connection_checked_out(event)
    monitor.connection_checked_out(event)
    monitor.connection_checked_in(event)
    assert _value(registry, "mercato_db_pool_connections", pool="mongodb", state="used") == 1
    assert _value(registry, "mercato_db_pool_connections", pool="mongodb", state="idle") == 2
    monitor.connection_closed(event)
    assert _value(registry, "mercato_db_pool_connections", pool="mongodb", state="idle") == 1
    assert _value(registry, "mercato_db_pool_max_connections", pool="mongodb") == 100


class SlowClient:
    """A producer client whose acknowledgements the test releases by hand."""

    def __init__(self) -> None:
        self.futures: list[asyncio.Future[Any]] = []

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def send(self, topic: str, value: bytes, **_: Any) -> asyncio.Future[Any]:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.futures.append(future)
        return future


class SlowProducer(EventProducer):
    def __init__(self, client: SlowClient) -> None:
        super().__init__("127.0.0.1:1")
        self.client = client

    def _new_client(self) -> Any:
        return self.client


async def test_producer_pending_counts_records_until_acknowledged_or_failed() -> None:
    registry = CollectorRegistry()
    saturation = SaturationMetrics(registry)
    client = SlowClient()
    producer = SlowProducer(client)
    saturation.watch_producer(producer)
    await producer.start()
    try:
        for _ in range(3):
            await producer.send("t", b"v")
        assert _value(registry, "mercato_kafka_producer_pending_messages") == 3
        client.futures[0].set_result("ack")
        client.futures[1].set_exception(RuntimeError("broker gone"))
        await asyncio.sleep(0)  # done callbacks run on the next loop turn
        assert _value(registry, "mercato_kafka_producer_pending_messages") == 1
        client.futures[2].cancel()
        await asyncio.sleep(0)
        assert _value(registry, "mercato_kafka_producer_pending_messages") == 0
    finally:
        await producer.stop()


@pytest.mark.parametrize("interval", [0.0, -1.0])
def test_lag_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="lag_interval"):
        SaturationMetrics(CollectorRegistry(), lag_interval=interval)
