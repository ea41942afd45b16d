"""Freshness: how far the consumers are, from the group's Kafka positions and the progress the
consumers record per partition (:class:`Progress` collects it between two flushes)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

__all__ = [
    "Freshness",
    "PartitionLag",
    "PartitionProgress",
    "Position",
    "Progress",
    "ProgressMarks",
    "freshness",
]

# Where the group stands on one partition: (topic, partition, committed offset, end offset).
Position = tuple[str, int, int, int]

# Per (topic, partition): (newest event time, last applied time).
ProgressMarks = Mapping[tuple[str, int], tuple[datetime, datetime]]


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    """What the consumers recorded for one partition (stored, flushed periodically)."""

    topic: str
    partition: int
    newest_event_time: datetime | None = None
    last_applied_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class PartitionLag:
    topic: str
    partition: int
    committed_offset: int
    end_offset: int
    newest_event_time: datetime | None = None

    @property
    def lag(self) -> int:
        return max(self.end_offset - self.committed_offset, 0)


@dataclass(frozen=True, slots=True)
class Freshness:
    newest_event_time: datetime | None
    last_applied_time: datetime | None
    partitions: tuple[PartitionLag, ...] = field(default=())

    @property
    def total_lag(self) -> int:
        return sum(partition.lag for partition in self.partitions)


def freshness(positions: Sequence[Position], progress: Iterable[PartitionProgress]) -> Freshness:
    """Combine Kafka positions ``(topic, partition, committed, end)`` with stored progress."""
    by_partition = {(p.topic, p.partition): p for p in progress}
    newest = [p.newest_event_time for p in by_partition.values() if p.newest_event_time]
    applied = [p.last_applied_time for p in by_partition.values() if p.last_applied_time]
    partitions = tuple(
        PartitionLag(
            topic=topic,
            partition=partition,
            committed_offset=committed,
            end_offset=end,
            newest_event_time=(
                by_partition[(topic, partition)].newest_event_time
                if (topic, partition) in by_partition
                else None
            ),
        )
        for topic, partition, committed, end in sorted(positions)
    )
    return Freshness(
        newest_event_time=max(newest) if newest else None,
        last_applied_time=max(applied) if applied else None,
        partitions=partitions,
    )


@dataclass(slots=True)
class _Mark:
    newest_event_time: datetime
    last_applied_time: datetime


class Progress:
    """Per-partition newest event time and last applied time, flushed to the store periodically.

    Observability only, not part of the exactly-once effect: stored with ``$max``, so flushing
    twice or late changes nothing.
    """

    def __init__(self) -> None:
        self._pending: dict[tuple[str, int], _Mark] = {}

    def note(self, topic: str, partition: int, event_time: datetime, applied: datetime) -> None:
        mark = self._pending.get((topic, partition))
        if mark is None:
            self._pending[(topic, partition)] = _Mark(event_time, applied)
            return
        mark.newest_event_time = max(mark.newest_event_time, event_time)
        mark.last_applied_time = max(mark.last_applied_time, applied)

    def take(self) -> dict[tuple[str, int], tuple[datetime, datetime]]:
        pending, self._pending = self._pending, {}
        return {key: (m.newest_event_time, m.last_applied_time) for key, m in pending.items()}

    def restore(self, marks: ProgressMarks) -> None:
        """Put back marks whose flush failed."""
        for (topic, partition), (event_time, applied) in marks.items():
            self.note(topic, partition, event_time, applied)
