"""What analytics reads from Kafka outside its consumers: where the group stands, and (for a
rebuild) the records the topics retain.

:class:`KafkaPositions` reads the committed offsets and log end offsets of every partition from
Kafka (not from this process's consumers), so GetFreshness and the lag gauge describe the whole
group, whichever replica owns which partition. A partition without a committed offset counts
from its log start offset (the group's ``auto_offset_reset`` is ``earliest``).

:class:`TopicReader` and :func:`commit_offsets` serve the rebuild: the group's state, the log
end offsets, every retained record up to them, and moving the group's offsets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from mercato_analytics.domain import KafkaUnavailable, Position
from mercato_common.kafka import KafkaConnection

__all__ = ["KafkaPositions", "TopicReader", "commit_offsets", "topic_partitions"]

log = logging.getLogger("mercato_analytics.positions")

# States of a consumer group without live members.
_IDLE_STATES = frozenset({"", "Empty", "Dead"})


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


class TopicReader:
    """Reads a group's state and the retained records of topics (an async context manager)."""

    def __init__(self, connection: KafkaConnection) -> None:
        self._connection = connection
        self._admin = AIOKafkaAdminClient(**connection.client_kwargs())
        self._reader = AIOKafkaConsumer(
            **connection.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest"
        )

    async def __aenter__(self) -> TopicReader:
        await self._admin.start()
        try:
            await self._reader.start()
        except BaseException:
            await self._admin.close()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        try:
            await self._reader.stop()
        finally:
            await self._admin.close()

    async def group_is_idle(self, group_id: str) -> tuple[bool, str]:
        """Whether the group has no live members, and a description of its state."""
        responses = await self._admin.describe_consumer_groups([group_id])
        state, members = "", 0  # a group that never existed
        for response in responses:
            for group in response.to_object()["groups"]:
                if group["group"] == group_id:
                    state, members = str(group["state"]), len(group["members"])
        idle = state in _IDLE_STATES and not members
        return idle, f"{state} with {members} member(s)"

    async def end_offsets(self, topics: Sequence[str]) -> dict[TopicPartition, int]:
        """The log end offset of every partition of ``topics``."""
        partitions = await topic_partitions(self._admin, topics)
        ends: Mapping[TopicPartition, int] = await self._reader.end_offsets(partitions)
        return {tp: ends[tp] for tp in partitions}

    async def replay(
        self,
        ends: Mapping[TopicPartition, int],
        handle: Callable[[Any], Awaitable[None]],
        *,
        concurrency: int,
        poll_records: int,
    ) -> None:
        """``handle`` every record from each partition's log start up to ``ends`` (exclusive):
        partitions in parallel (at most ``concurrency`` at a time), records of one in order."""
        reader = self._reader
        pending = {tp for tp, end in ends.items() if end > 0}
        if not pending:
            return
        reader.assign(sorted(pending))
        await reader.seek_to_beginning(*pending)
        for tp in list(pending):
            if await reader.position(tp) >= ends[tp]:
                pending.discard(tp)
        slots = asyncio.Semaphore(concurrency)

        async def replay_partition(tp: TopicPartition, records: Sequence[Any]) -> None:
            async with slots:
                for record in records:
                    if record.offset >= ends[tp]:
                        break
                    await handle(record)

        while pending:
            batch = await reader.getmany(*pending, timeout_ms=1000, max_records=poll_records)
            await asyncio.gather(*(replay_partition(tp, records) for tp, records in batch.items()))
            for tp in list(pending):
                if await reader.position(tp) >= ends[tp]:
                    pending.discard(tp)
                    reader.pause(tp)


async def commit_offsets(
    connection: KafkaConnection, group_id: str, offsets: Mapping[TopicPartition, int]
) -> None:
    """Commit ``offsets`` for ``group_id``, as its consumers would."""
    committer = AIOKafkaConsumer(
        **connection.client_kwargs(), group_id=group_id, enable_auto_commit=False
    )
    await committer.start()
    try:
        committer.assign(sorted(offsets))
        await committer.commit(dict(offsets))
    finally:
        await committer.stop()
