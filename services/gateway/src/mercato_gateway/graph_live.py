"""The events behind GraphQL subscriptions: which watched resources changed.

An RPC marked ``(mercato.api.v1.live)`` (``GetOrder``) is watchable: a subscription re-reads its
resource whenever an event keyed by the resource's id arrives on the contract's topic. Each
gateway process runs one Kafka consumer over those topics **without a consumer group**, from the
end of each partition: every replica (and every worker of one) sees every event, so a
subscriber is served by whichever process holds its WebSocket, with any number of replicas. The
consumer only reads keys (the envelope's subject, the resource's id); what a subscriber may see
is decided by the RPC, called again with the subscriber's token.

Events the process did not see (Kafka unreachable, the consumer restarting) are covered twice:
every watch is woken when the consumer (re)starts reading, and re-reads its resource every
``refresh_seconds`` without an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Iterator
from typing import Any

from aiokafka import AIOKafkaConsumer
from prometheus_client import CollectorRegistry, Counter, Gauge

from mercato_common.kafka import IDLE_POLL_TIMEOUT_MS, QUIET_FETCH_OPTIONS, Backoff, KafkaConnection

__all__ = ["EventFanout", "Watch"]

_log = logging.getLogger("mercato_gateway.live")


class Watch:
    """One subscription's interest in one resource: woken when an event names it."""

    def __init__(self) -> None:
        self._woken = asyncio.Event()

    def wake(self) -> None:
        self._woken.set()

    async def changed(self, timeout: float) -> None:  # noqa: ASYNC109 - a refresh period
        """Returns once an event named the resource (events since the last return count once),
        or after ``timeout`` seconds."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._woken.wait(), timeout)
        self._woken.clear()


class EventFanout:
    """One consumer of ``topics`` per process, waking the :class:`Watch` of each event's key."""

    def __init__(
        self,
        connection: KafkaConnection,
        topics: Iterable[str],
        *,
        registry: CollectorRegistry,
    ) -> None:
        self._connection = connection
        self.topics = tuple(sorted(set(topics)))
        self._watches: dict[tuple[str, str], set[Watch]] = {}
        self._task: asyncio.Task[None] | None = None
        self._failures = 0
        self._reading = asyncio.Event()
        self._events = Counter(
            "gateway_live_events_total",
            "Events read for GraphQL subscriptions, by whether a subscription watched their key.",
            ["topic", "watched"],
            registry=registry,
        )
        self._watched = Gauge(
            "gateway_live_watches",
            "Resources watched by GraphQL subscriptions in this process.",
            registry=registry,
            multiprocess_mode="livesum",
        )

    @contextlib.contextmanager
    def watch(self, topic: str, key: str) -> Iterator[Watch]:
        """A watch of ``key`` on ``topic`` for as long as the block runs."""
        watch = Watch()
        watches = self._watches.setdefault((topic, key), set())
        watches.add(watch)
        self._watched.inc()
        try:
            yield watch
        finally:
            watches.discard(watch)
            if not watches:
                del self._watches[(topic, key)]
            self._watched.dec()

    @property
    def reading(self) -> bool:
        """Whether the consumer is reading (has its partitions)."""
        return self._reading.is_set()

    async def wait_reading(self, timeout: float) -> bool:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._reading.wait(), timeout)
        return self.reading

    async def start(self) -> None:
        if self.topics:
            self._task = asyncio.create_task(self._run(), name="gateway-live-events")

    async def stop(self, grace: float = 0.0) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        backoff = Backoff(initial=0.5, maximum=30.0)
        self._failures = 0
        while True:
            consumer = AIOKafkaConsumer(
                *self.topics,
                group_id=None,  # every process reads every event
                auto_offset_reset="latest",
                enable_auto_commit=False,
                **QUIET_FETCH_OPTIONS,
                **self._connection.client_kwargs(),
            )
            try:
                await consumer.start()
                await self._read(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                self._failures += 1
                delay = backoff.delay(self._failures)
                _log.warning(
                    "live events: consumer failed, restarting",
                    extra={"error": type(error).__name__, "retry_in_seconds": round(delay, 1)},
                )
                await asyncio.sleep(delay)
            finally:
                self._reading.clear()
                await consumer.stop()

    async def _read(self, consumer: Any) -> None:
        first = True
        while True:
            # The first poll is short: it tells the subscriptions that reading has begun. Later
            # ones wait longer (records end the wait at once; stop cancels it), so an idle
            # gateway wakes rarely.
            batch = await consumer.getmany(timeout_ms=1_000 if first else IDLE_POLL_TIMEOUT_MS)
            if first:
                # Reading from the end now: whatever happened before may have been missed.
                first = False
                self._reading.set()
                self._failures = 0
                self._wake_all()
            for partition, records in batch.items():
                for record in records:
                    self._deliver(partition.topic, record.key)

    def _deliver(self, topic: str, key: bytes | None) -> None:
        watches = self._watches.get((topic, key.decode(errors="replace")), ()) if key else ()
        self._events.labels(topic, "true" if watches else "false").inc()
        for watch in watches:
            watch.wake()

    def _wake_all(self) -> None:
        for watches in self._watches.values():
            for watch in watches:
                watch.wake()
