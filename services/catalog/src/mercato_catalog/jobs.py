"""Periodic work: the reservation sweeper, which expires uncommitted reservations, drops old
return markers and, every few rounds, finishes abandoned steps and reaps orphan holds.

A Lifecycle part of the process built on ``Periodic``; the work itself is the use cases of
``service.upkeep``. Safe to run in every replica (each step is a guarded single-document
update, so two sweepers never apply one twice).
"""

from __future__ import annotations

import logging
from datetime import timedelta

from mercato_catalog.service.upkeep import ReservationUpkeep
from mercato_catalog.store import utcnow
from mercato_common.runtime import Periodic

__all__ = ["ReservationSweeper"]

log = logging.getLogger("mercato_catalog.sweeper")


class ReservationSweeper:
    def __init__(
        self,
        upkeep: ReservationUpkeep,
        *,
        interval: float,
        stuck_after: timedelta,
        orphan_grace: timedelta,
        orphan_every: int = 12,
        batch: int = 100,
    ) -> None:
        self._upkeep = upkeep
        self._stuck_after = stuck_after
        self._orphan_grace = orphan_grace
        self._orphan_every = max(orphan_every, 1)
        self._batch = batch
        self._rounds = 0
        # Steps count as abandoned after ``stuck_after``: looking for them once in that time
        # finds each within twice that, and spares the store most of the queries of a sweep
        # (one per step phase, each reading every saga in that phase).
        self._slow_every = max(round(stuck_after.total_seconds() / interval), 1)
        # A sweep in progress gets 10 s to finish at stop before it is cancelled.
        self._periodic = Periodic(
            "reservation-sweeper", self._sweep, interval=interval, grace=10.0, logger=log
        )

    async def sweep_once(self) -> dict[str, int]:
        """One pass; the counts of what it did."""
        now = utcnow()
        done = {
            "expired": await self._upkeep.expire_due(now, self._batch),
            "finished": 0,
            "returns_forgotten": await self._upkeep.forget_returns(now, self._batch),
            "orphans": 0,
        }
        if self._rounds % self._slow_every == 0:
            done["finished"] = await self._upkeep.finish_stuck(now - self._stuck_after, self._batch)
        if self._rounds % self._orphan_every == 0:
            done["orphans"] = await self._upkeep.reap_orphan_holds(
                now - self._orphan_grace, self._batch
            )
        self._rounds += 1
        return done

    async def _sweep(self) -> None:
        done = await self.sweep_once()
        if any(done.values()):
            log.info("reservation sweep", extra=done)

    async def start(self) -> None:
        await self._periodic.start()

    async def stop(self) -> None:
        await self._periodic.stop()
