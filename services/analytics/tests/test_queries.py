"""The query use cases' range defaults and checks (a recording store, no network)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from mercato_analytics.domain import BucketSize, InvalidRange
from mercato_analytics.service import Queries
from mercato_analytics.service.queries import default_range
from mercato_analytics.store import AnalyticsStore

NOW = datetime(2026, 3, 4, 15, 27, 30, tzinfo=UTC)


class RecordingRollups:
    """No roll-ups, no dirty minutes; remembers the range each query read."""

    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []
        self.reads: list[tuple[set[BucketSize], bool]] = []

    async def dirty_minutes(self, start: datetime, end: datetime) -> list[datetime]:
        self.calls.append({"start": start, "end": end})
        return []

    async def read(self, spans: Any, *, split_days: bool = False) -> list[Any]:
        self.reads.append(({span.level for span in spans}, split_days))
        return []


class RecordingStore:
    def __init__(self) -> None:
        self.rollups = RecordingRollups()
        self.calls = self.rollups.calls


def _queries() -> tuple[Queries, RecordingStore]:
    store = RecordingStore()
    queries = Queries(cast(AnalyticsStore, store), positions=cast(Any, None), clock=lambda: NOW)
    return queries, store


async def test_a_bare_sales_summary_is_the_last_7_days_by_day() -> None:
    queries, store = _queries()
    summary = await queries.sales_summary(None, None, None)
    assert store.calls == [
        {
            "start": datetime(2026, 2, 25, tzinfo=UTC),  # NOW - 7 days, floored to the day
            "end": datetime(2026, 3, 5, tzinfo=UTC),  # NOW, rounded up to the day
        }
    ]
    assert [b.start.day for b in summary.buckets] == [25, 26, 27, 28, 1, 2, 3, 4]


async def test_sales_by_hour_read_whole_days_as_their_hours() -> None:
    queries, store = _queries()
    await queries.sales_summary(BucketSize.HOUR, None, None)
    # 7 days ending at 16:00: the whole days from their day roll-ups, split into hours; the
    # partial days at both ends from their hours.
    assert store.rollups.reads == [({BucketSize.DAY, BucketSize.HOUR}, True)]
    await queries.sales_summary(BucketSize.DAY, None, None)
    await queries.funnel(None, None)
    assert [split for _, split in store.rollups.reads[1:]] == [False, False]


async def test_the_default_start_never_exceeds_the_bucket_limit() -> None:
    queries, store = _queries()
    await queries.sales_summary(BucketSize.MINUTE, None, None)
    call = store.calls[0]
    assert call["end"] - call["start"] == timedelta(hours=24, minutes=1)
    assert call["end"] == datetime(2026, 3, 4, 15, 28, tzinfo=UTC)


async def test_a_bare_funnel_is_the_last_7_days_in_whole_minutes() -> None:
    queries, store = _queries()
    await queries.funnel(None, None)
    assert store.calls == [
        {
            "start": datetime(2026, 2, 25, 15, 27, tzinfo=UTC),
            "end": datetime(2026, 3, 4, 15, 28, tzinfo=UTC),
        }
    ]
    end = datetime(2026, 1, 10, tzinfo=UTC)
    await queries.funnel(None, end)
    assert store.calls[1] == {"start": end - timedelta(days=7), "end": end}


async def test_only_inverted_or_too_long_ranges_are_refused_naming_the_field() -> None:
    queries, _ = _queries()
    with pytest.raises(InvalidRange) as inverted:
        await queries.funnel(NOW + timedelta(hours=1), None)  # starts after the default end
    assert [v.field for v in inverted.value.field_violations] == ["end_time"]
    with pytest.raises(InvalidRange) as too_long:
        await queries.sales_summary(BucketSize.HOUR, NOW - timedelta(days=40), None)
    assert [v.field for v in too_long.value.field_violations] == ["end_time"]


def test_default_start_stays_valid_near_the_epoch() -> None:
    end = datetime(1970, 1, 2, tzinfo=UTC)
    assert default_range(None, end, now=NOW) == (datetime(1970, 1, 1, tzinfo=UTC), end)
