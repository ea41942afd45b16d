"""Saturation metrics every process exports: event loop lag, database pools, producer queue.

:class:`SaturationMetrics` is a lifecycle part. It measures the event loop's lag while started
and, through a collector read at scrape time, reports the state of what the service registered
with it: PostgreSQL pools (:meth:`SaturationMetrics.watch_postgres`), MongoDB pools
(:meth:`SaturationMetrics.watch_mongo` with a :class:`mercato_common.mongo.MongoPoolMonitor`
passed to the client)
and Kafka producers (:meth:`SaturationMetrics.watch_producer`).

Metrics (Prometheus names):

- ``mercato_event_loop_lag_seconds`` (histogram): how late a timer callback ran (one probe a
  second: an idle process wakes no more often for it). Anything that blocks the loop
  (CPU-bound work, a synchronous call) delays every request by as much.
- ``mercato_db_pool_connections{pool, state}`` (gauge, state ``used`` | ``idle``) and
  ``mercato_db_pool_max_connections{pool}``: a pool whose used connections sit at the maximum
  makes callers queue for a connection.
- ``mercato_kafka_producer_pending_messages`` (gauge): records handed to the producer and not
  yet acknowledged by the broker; it grows while the broker is slow or away.

The collector runs in the metrics endpoint's thread; it only reads integers the event loop
maintains (and asyncpg's pool sizes), so it never blocks or races the loop in a harmful way.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["PendingCounter", "PoolCounter", "SaturationMetrics"]

#: Event loop lag buckets: a healthy loop stays under a few milliseconds; 100 ms and more means
#: requests wait on something blocking the loop.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class PendingCounter(Protocol):
    """Has records in flight, like :class:`~mercato_common.kafka.EventProducer`."""

    @property
    def pending_messages(self) -> int: ...


class PoolCounter(Protocol):
    """Counts a pool's connections, like :class:`mercato_common.mongo.MongoPoolMonitor`."""

    @property
    def used(self) -> int: ...

    @property
    def idle(self) -> int: ...


class _PoolReading:
    """How to read one pool: used, idle and maximum connections."""

    def __init__(
        self,
        used: Callable[[], float],
        idle: Callable[[], float],
        maximum: Callable[[], float],
    ) -> None:
        self.used = used
        self.idle = idle
        self.maximum = maximum


class _SaturationCollector(Collector):
    def __init__(self) -> None:
        self.pools: dict[str, _PoolReading] = {}
        self.producers: list[PendingCounter] = []

    def describe(self) -> Iterator[Metric]:
        yield from self._families()

    def collect(self) -> Iterator[Metric]:
        connections, maximum, pending = self._families()
        for name, pool in self.pools.items():
            try:
                used, idle, limit = pool.used(), pool.idle(), pool.maximum()
            except RuntimeError:  # the pool is not started (or stopped): nothing to report
                continue
            connections.add_metric([name, "used"], used)
            connections.add_metric([name, "idle"], idle)
            maximum.add_metric([name], limit)
        if self.producers:
            pending.add_metric([], sum(p.pending_messages for p in self.producers))
        yield from (connections, maximum, pending)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily(
                "mercato_db_pool_connections",
                "Connections of the database pool, by state (used: checked out; idle).",
                labels=["pool", "state"],
            ),
            GaugeMetricFamily(
                "mercato_db_pool_max_connections",
                "Most connections the database pool opens.",
                labels=["pool"],
            ),
            GaugeMetricFamily(
                "mercato_kafka_producer_pending_messages",
                "Records handed to the Kafka producer and not yet acknowledged by the broker.",
                labels=[],
            ),
        )


class SaturationMetrics:
    """The saturation metrics of one process (a lifecycle part: start/stop the lag probe)."""

    def __init__(
        self, registry: CollectorRegistry = REGISTRY, *, lag_interval: float = 1.0
    ) -> None:
        if lag_interval <= 0:
            raise ValueError(f"lag_interval must be positive, not {lag_interval}")
        self._interval = lag_interval
        self.lag = Histogram(
            "mercato_event_loop_lag_seconds",
            "How late the event loop ran a timer callback (time the loop was blocked).",
            buckets=LAG_BUCKETS,
            registry=registry,
        )
        self._collector = _SaturationCollector()
        registry.register(self._collector)
        self._task: asyncio.Task[None] | None = None

    def watch_postgres(self, name: str, pool: Callable[[], Any]) -> None:
        """Report an asyncpg pool; ``pool`` returns it (it exists only once started)."""
        self._collector.pools[name] = _PoolReading(
            used=lambda: pool().get_size() - pool().get_idle_size(),
            idle=lambda: pool().get_idle_size(),
            maximum=lambda: pool().get_max_size(),
        )

    def watch_mongo(self, name: str, monitor: PoolCounter, max_pool_size: float) -> None:
        """Report a MongoDB client's pool, counted by the ``monitor`` given to the client."""
        self._collector.pools[name] = _PoolReading(
            used=lambda: monitor.used, idle=lambda: monitor.idle, maximum=lambda: max_pool_size
        )

    def watch_producer(self, producer: PendingCounter) -> None:
        self._collector.producers.append(producer)

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._probe(), name="event-loop-lag")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _probe(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self._interval)
            self.lag.observe(max(loop.time() - before - self._interval, 0.0))
