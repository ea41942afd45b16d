"""Where the consumer group stands: committed offsets and log end offsets of every partition.

Read from Kafka (not from this process's consumers), so GetFreshness and the lag gauge describe
the whole group, whichever replica owns which partition. A partition without a committed offset
counts from its log start offset (the group's ``auto_offset_reset`` is ``earliest``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from mercato_analytics.domain import KafkaUnavailable
from mercato_common.kafka import KafkaConnection

__all__ = ["KafkaPositions", "Position", "topic_partitions"]

log = logging.getLogger("mercato_analytics.lag")

# (topic, partition, committed offset, end offset)
Position = tuple[str, int, int, int]


async def topic_partitions(admin: Any, topics: Sequence[str]) -> list[TopicPartition]:
    """Every partition of ``topics`` (raises ``KafkaError`` subclasses on unknown topics)."""
    described = await admin.describe_topics(list(topics))
    out: list[TopicPartition] = []
    for topic in described:
        if topic["error_code"]:
            raise KafkaError(f"topic {topic['topic']}: error code {topic['error_code']}")
        out.extend(TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"])
    return sorted(out)


class KafkaPositions:
    """Reads positions on demand (cached ``cache_seconds``); clients connect lazily."""

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        group_id: str,
        topics: Sequence[str],
        cache_seconds: float = 1.0,
        timeout: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._connection = connection
        self._group_id = group_id
        self._topics = tuple(topics)
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._clock = clock
        self._admin: Any = None
        self._consumer: Any = None
        self._cached: tuple[float, list[Position]] | None = None
        self._lock = asyncio.Lock()

    async def read(self) -> list[Position]:
        """Positions of every partition of the consumed topics, ordered by topic and partition."""
        async with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self._cache_seconds:
                return self._cached[1]
            try:
                positions = await asyncio.wait_for(self._read(), self._timeout)
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning("cannot read consumer positions: %r", exc)
                await self._close()
                raise KafkaUnavailable("Kafka did not answer; consumer lag is unknown") from exc
            self._cached = (self._clock(), positions)
            return positions

    async def _read(self) -> list[Position]:
        if self._admin is None:
            admin = AIOKafkaAdminClient(**self._connection.client_kwargs())
            await admin.start()
            self._admin = admin
        if self._consumer is None:
            consumer = AIOKafkaConsumer(
                **self._connection.client_kwargs(), enable_auto_commit=False
            )
            await consumer.start()
            self._consumer = consumer
        partitions = await topic_partitions(self._admin, self._topics)
        committed = await self._admin.list_consumer_group_offsets(
            self._group_id, partitions=partitions
        )
        ends = await self._consumer.end_offsets(partitions)
        starts = await self._consumer.beginning_offsets(partitions)
        out: list[Position] = []
        for tp in partitions:
            meta = committed.get(tp)
            offset = meta.offset if meta is not None and meta.offset >= 0 else starts[tp]
            out.append((tp.topic, tp.partition, int(offset), int(ends[tp])))
        return out

    async def _close(self) -> None:
        admin, self._admin = self._admin, None
        consumer, self._consumer = self._consumer, None
        for client in (consumer, admin):
            if client is None:
                continue
            try:
                await (client.stop() if client is consumer else client.close())
            except (KafkaError, OSError) as exc:
                log.debug("closing a Kafka client: %r", exc)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await self._close()
