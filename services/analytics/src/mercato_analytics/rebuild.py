"""Rebuild: recompute every aggregate from the events the topics still retain.

``python -m mercato_analytics rebuild`` (in place, for recovery or after adding an aggregate):

1. refuses while the consumer group has live members (stop the consumers first; ``--force``
   skips the check),
2. notes every partition's log end offset,
3. drops the aggregates and creates the indexes again,
4. reads every partition from its log start up to the noted end offset and applies each record
   with the live consumers' code (:class:`EventApplier`: same facts, same guarded increments,
   so the result is the same documents), partitions in parallel, records of one partition in
   order; records that cannot be applied are counted and skipped (they are already on the
   dead-letter topic from the live run),
5. commits the noted end offsets for the group, so the consumers resume right after what the
   rebuild covered: nothing is missed and nothing counted twice.

``--database NAME`` rebuilds into another database and leaves the group alone (a side build,
to compare or to prepare a new database). Events older than the topics' retention are gone:
a rebuild reproduces the live figures only while the topics retain every event.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from prometheus_client import CollectorRegistry

from mercato_analytics.events import AnalyticsMetrics, EventApplier, Progress
from mercato_analytics.lag import topic_partitions
from mercato_analytics.store import INDEXES, AnalyticsStore
from mercato_common.kafka import (
    ConsumedEvent,
    KafkaConnection,
    PermanentError,
    UndecodableMessageError,
    decode_envelope,
    headers_to_map,
)
from mercato_common.mongo import ensure_indexes

__all__ = ["GroupActiveError", "RebuildReport", "group_members", "rebuild"]

log = logging.getLogger("mercato_analytics.rebuild")

_IDLE_STATES = frozenset({"", "Empty", "Dead"})


class GroupActiveError(RuntimeError):
    """The consumer group has members: an in-place rebuild would race the live consumers."""


@dataclass
class RebuildReport:
    database: str
    partitions: int = 0
    records: int = 0
    outcomes: Tally[str] = field(default_factory=Tally)
    skipped: int = 0
    end_offsets: dict[str, int] = field(default_factory=dict)
    committed: bool = False
    seconds: float = 0.0

    def lines(self) -> list[str]:
        out = [
            f"database        {self.database}",
            f"partitions      {self.partitions}",
            f"records         {self.records}",
        ]
        out += [f"  {name:<13} {count}" for name, count in sorted(self.outcomes.items())]
        out += [
            f"  {'skipped':<13} {self.skipped}",
            f"group offsets   {'committed' if self.committed else 'unchanged'}",
            f"seconds         {self.seconds:.2f}",
        ]
        return out


async def group_members(admin: Any, group_id: str) -> tuple[str, int]:
    """The group's state and member count (``("", 0)`` for a group that never existed)."""
    responses = await admin.describe_consumer_groups([group_id])
    for response in responses:
        for group in response.to_object()["groups"]:
            if group["group"] == group_id:
                return str(group["state"]), len(group["members"])
    return "", 0


async def rebuild(
    *,
    connection: KafkaConnection,
    store: AnalyticsStore,
    topics: Sequence[str],
    group_id: str,
    commit_group: bool,
    check_group: bool = True,
    concurrency: int = 6,
    poll_records: int = 1000,
) -> RebuildReport:
    """Recompute ``store``'s aggregates from ``topics`` (see the module docstring)."""
    started = time.monotonic()
    report = RebuildReport(database=store.db.name)
    admin = AIOKafkaAdminClient(**connection.client_kwargs())
    reader = AIOKafkaConsumer(
        **connection.client_kwargs(), enable_auto_commit=False, auto_offset_reset="earliest"
    )
    await admin.start()
    try:
        await reader.start()
        try:
            if check_group:
                state, members = await group_members(admin, group_id)
                if state not in _IDLE_STATES or members:
                    raise GroupActiveError(
                        f"consumer group {group_id} is {state} with {members} member(s): "
                        "stop the analytics consumers before rebuilding in place"
                    )
            partitions = await topic_partitions(admin, topics)
            ends: Mapping[TopicPartition, int] = await reader.end_offsets(partitions)
            report.partitions = len(partitions)
            report.end_offsets = {f"{tp.topic}[{tp.partition}]": ends[tp] for tp in partitions}
            await store.drop_all()
            await ensure_indexes(store.db, INDEXES)
            progress = Progress()
            applier = EventApplier(
                store, metrics=AnalyticsMetrics(CollectorRegistry()), progress=progress
            )
            await _replay(reader, partitions, ends, applier, report, concurrency, poll_records)
            await store.record_progress(progress.take())
        finally:
            await reader.stop()
        if commit_group:
            await _commit(connection, group_id, {tp: ends[tp] for tp in partitions})
            report.committed = True
    finally:
        await admin.close()
    report.seconds = time.monotonic() - started
    return report


async def _replay(
    reader: Any,
    partitions: Sequence[TopicPartition],
    ends: Mapping[TopicPartition, int],
    applier: EventApplier,
    report: RebuildReport,
    concurrency: int,
    poll_records: int,
) -> None:
    pending = {tp for tp in partitions if ends[tp] > 0}
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
                await _apply(applier, record, report)

    while pending:
        batch = await reader.getmany(*pending, timeout_ms=1000, max_records=poll_records)
        await asyncio.gather(*(replay_partition(tp, records) for tp, records in batch.items()))
        for tp in list(pending):
            if await reader.position(tp) >= ends[tp]:
                pending.discard(tp)
                reader.pause(tp)


async def _apply(applier: EventApplier, record: Any, report: RebuildReport) -> None:
    report.records += 1
    try:
        envelope = decode_envelope(record.value)
        event = ConsumedEvent(
            envelope=envelope, record=record, headers=headers_to_map(record.headers), attempt=1
        )
        outcome = await applier.apply_record(event)
    except (PermanentError, UndecodableMessageError) as exc:
        report.skipped += 1
        log.warning(
            "rebuild skips %s[%s]@%s: %s", record.topic, record.partition, record.offset, exc
        )
        return
    report.outcomes[outcome] += 1


async def _commit(
    connection: KafkaConnection, group_id: str, offsets: Mapping[TopicPartition, int]
) -> None:
    committer = AIOKafkaConsumer(
        **connection.client_kwargs(), group_id=group_id, enable_auto_commit=False
    )
    await committer.start()
    try:
        committer.assign(sorted(offsets))
        await committer.commit(dict(offsets))
    finally:
        await committer.stop()
