"""Use case: rebuild, recomputing every aggregate from the events the topics still retain.

In place (for recovery, or after adding an aggregate):

1. refuse while the consumer group has live members (stop the consumers first; ``check_group``
   off skips the check),
2. note every partition's log end offset,
3. drop the aggregates and create the indexes again,
4. read every partition from its log start up to the noted end offset and apply each record
   with the live consumers' handler (``apply_record``: same decoding, same checks, same facts,
   so the result is the same documents), partitions in parallel, records of one partition in
   order; records that cannot be applied are counted and skipped (they are already on the
   dead-letter topic from the live run),
5. commit the noted end offsets for the group (``commit_group``), so the consumers resume right
   after what the rebuild covered: nothing is missed and nothing counted twice.

Into another database the group is left alone (a side build, to compare or to prepare a new
database). Events older than the topics' retention are gone: a rebuild reproduces the live
figures only while the topics retain every event.
"""

from __future__ import annotations

import logging
import time
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from mercato_analytics.domain import Progress
from mercato_analytics.positions import TopicReader, commit_offsets
from mercato_analytics.store import AnalyticsStore
from mercato_common.kafka import (
    ConsumedEvent,
    KafkaConnection,
    PermanentError,
    UndecodableMessageError,
    decode_envelope,
    headers_to_map,
)

__all__ = ["GroupActiveError", "RebuildReport", "rebuild"]

log = logging.getLogger("mercato_analytics.rebuild")

# The live consumers' handler of one record; returns the outcome (applied, duplicate, ...).
RecordApplier = Callable[[ConsumedEvent], Awaitable[str]]


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


async def rebuild(
    *,
    connection: KafkaConnection,
    store: AnalyticsStore,
    topics: Sequence[str],
    group_id: str,
    commit_group: bool,
    apply_record: RecordApplier,
    progress: Progress,
    check_group: bool = True,
    concurrency: int = 6,
    poll_records: int = 1000,
) -> RebuildReport:
    """Recompute ``store``'s aggregates from ``topics`` (see the module docstring);
    ``progress`` is what ``apply_record`` notes, recorded at the end."""
    started = time.monotonic()
    report = RebuildReport(database=store.db.name)

    async def apply(record: Any) -> None:
        report.records += 1
        try:
            event = ConsumedEvent(
                envelope=decode_envelope(record.value),
                record=record,
                headers=headers_to_map(record.headers),
                attempt=1,
            )
            outcome = await apply_record(event)
        except (PermanentError, UndecodableMessageError) as exc:
            report.skipped += 1
            log.warning(
                "rebuild skips %s[%s]@%s: %s", record.topic, record.partition, record.offset, exc
            )
            return
        report.outcomes[outcome] += 1

    async with TopicReader(connection) as reader:
        if check_group:
            idle, state = await reader.group_is_idle(group_id)
            if not idle:
                raise GroupActiveError(
                    f"consumer group {group_id} is {state}: "
                    "stop the analytics consumers before rebuilding in place"
                )
        ends = await reader.end_offsets(topics)
        report.partitions = len(ends)
        report.end_offsets = {f"{tp.topic}[{tp.partition}]": end for tp, end in ends.items()}
        await store.drop_all()
        await store.ensure_indexes()
        await reader.replay(ends, apply, concurrency=concurrency, poll_records=poll_records)
        await store.record_progress(progress.take())
    if commit_group:
        await commit_offsets(connection, group_id, ends)
        report.committed = True
    report.seconds = time.monotonic() - started
    return report
