"""How often the roll-up job runs: every ``interval`` while there is work, else every
``idle_interval``, over a roll-up and a lease in memory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from mercato_analytics.jobs import RollupJob

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


class Work:
    """The roll-up and its lease: each run takes the next count of ``taken`` (then 0)."""

    settle = timedelta(seconds=3)

    def __init__(self, *taken: int) -> None:
        self.taken = list(taken)
        self.now = T0
        self.rollups = self

    async def take_lease(self, holder: str, *, now: datetime, seconds: float) -> bool:
        return True

    async def backfill(self) -> None:
        return None

    async def move_single_collection(self) -> int:
        return 0

    async def run_until_clean(self, *, rounds: int) -> int:
        return self.taken.pop(0) if self.taken else 0

    def job(self) -> RollupJob:
        store = cast(Any, SimpleNamespace(rollups=self))
        return RollupJob(
            cast(Any, self), store, interval=1, idle_interval=10, lease=30, clock=lambda: self.now
        )


async def run(job: RollupJob) -> float:
    await job._tick()
    return job.interval


async def test_the_job_slows_down_once_a_run_finds_nothing() -> None:
    work = Work(5, 2)
    job = work.job()
    assert [await run(job), await run(job), await run(job)] == [1, 1, 10]


async def test_a_mark_of_this_process_keeps_it_running_until_the_mark_has_settled() -> None:
    work = Work()
    job = work.job()
    assert await run(job) == 10
    job.wake()
    assert job.interval == 1
    work.now = T0 + timedelta(seconds=3.5)  # settle (3 s) + interval (1 s) not yet past
    assert await run(job) == 1
    work.now = T0 + timedelta(seconds=4.5)
    assert await run(job) == 10
