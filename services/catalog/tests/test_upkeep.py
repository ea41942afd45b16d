"""Which sagas the sweeper's expiry reads: the minutes since its last sweep, a full scan at
start, after a long gap and every ``full_scan_every`` sweeps, and the same window again while
more is due than one sweep takes."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from mercato_catalog.domain.reservations import expiry_minute
from mercato_catalog.service.upkeep import MAX_WINDOW_MINUTES, ReservationUpkeep

T0 = datetime(2026, 12, 4, 8, 0, 30, tzinfo=UTC)


class RecordingSagas:
    """The store's expiry query, answering ``due`` sagas and recording what was asked."""

    def __init__(self) -> None:
        self.queries: list[list[int] | None] = []
        self.due = 0

    async def due_for_expiry(
        self, now: datetime, limit: int, *, minutes: Sequence[int] | None = None
    ) -> list[Any]:
        self.queries.append(None if minutes is None else list(minutes))
        return [object()] * min(self.due, limit)


class ExpiringAll:
    async def expire(self, saga: Any) -> bool:
        return True


def _upkeep(sagas: RecordingSagas, full_scan_every: int = 60) -> ReservationUpkeep:
    return ReservationUpkeep(
        cast(Any, sagas),
        cast(Any, ExpiringAll()),
        cast(Any, None),
        cast(Any, None),
        full_scan_every=full_scan_every,
    )


async def test_first_sweep_scans_then_reads_only_the_minutes_since() -> None:
    sagas = RecordingSagas()
    upkeep = _upkeep(sagas)
    await upkeep.expire_due(T0, 100)
    await upkeep.expire_due(T0 + timedelta(seconds=5), 100)
    await upkeep.expire_due(T0 + timedelta(seconds=75), 100)
    m = expiry_minute(T0)
    assert sagas.queries == [None, [m], [m, m + 1]]


async def test_a_full_batch_keeps_the_window_until_everything_due_is_expired() -> None:
    sagas = RecordingSagas()
    upkeep = _upkeep(sagas)
    await upkeep.expire_due(T0, 100)
    sagas.due = 100  # as many as one sweep takes: more may be due in the same minutes
    later = T0 + timedelta(minutes=3)
    assert await upkeep.expire_due(later, 100) == 100
    sagas.due = 3
    assert await upkeep.expire_due(later, 100) == 3
    await upkeep.expire_due(later, 100)
    m = expiry_minute(T0)
    assert sagas.queries[1:] == [[m, m + 1, m + 2, m + 3]] * 2 + [[m + 3]]


async def test_long_gaps_and_every_nth_sweep_scan_everything() -> None:
    sagas = RecordingSagas()
    upkeep = _upkeep(sagas, full_scan_every=3)
    await upkeep.expire_due(T0, 100)  # 1: first
    await upkeep.expire_due(T0, 100)  # 2: window
    await upkeep.expire_due(T0, 100)  # 3: every third
    await upkeep.expire_due(T0 + timedelta(minutes=MAX_WINDOW_MINUTES + 1), 100)  # 4: gap
    await upkeep.expire_due(T0 + timedelta(minutes=MAX_WINDOW_MINUTES + 1), 100)  # 5: window
    m = expiry_minute(T0 + timedelta(minutes=MAX_WINDOW_MINUTES + 1))
    assert sagas.queries == [None, [expiry_minute(T0)], None, None, [m]]
