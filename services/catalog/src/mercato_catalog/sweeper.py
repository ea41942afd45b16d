"""The reservation sweeper: expires uncommitted reservations and finishes abandoned steps.

A Lifecycle part of the process; safe to run in every replica (each step is a guarded
single-document update, so two sweepers never apply one twice).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import timedelta

from mercato_catalog.store import ReservationStore, utcnow

__all__ = ["ReservationSweeper"]

log = logging.getLogger("mercato_catalog.sweeper")


class ReservationSweeper:
    def __init__(
        self,
        reservations: ReservationStore,
        *,
        interval: float,
        stuck_after: timedelta,
        orphan_grace: timedelta,
        orphan_every: int = 12,
        batch: int = 100,
    ) -> None:
        self._reservations = reservations
        self._interval = interval
        self._stuck_after = stuck_after
        self._orphan_grace = orphan_grace
        self._orphan_every = max(orphan_every, 1)
        self._batch = batch
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._rounds = 0

    async def sweep_once(self) -> dict[str, int]:
        """One pass; the counts of what it did."""
        now = utcnow()
        done = {
            "expired": await self._reservations.expire_due(now, self._batch),
            "finished": await self._reservations.finish_stuck(now - self._stuck_after, self._batch),
            "returns_forgotten": await self._reservations.forget_returns(now, self._batch),
            "orphans": 0,
        }
        if self._rounds % self._orphan_every == 0:
            done["orphans"] = await self._reservations.reap_orphan_holds(
                now - self._orphan_grace, self._batch
            )
        self._rounds += 1
        return done

    async def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                done = await self.sweep_once()
                if any(done.values()):
                    log.info("reservation sweep", extra=done)
            except Exception as exc:
                log.warning("reservation sweep failed: %r", exc)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._interval)

    async def start(self) -> None:
        self._stopping.clear()
        self._task = asyncio.create_task(self._run(), name="reservation-sweeper")

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, 10)
            except TimeoutError:
                self._task.cancel()
            self._task = None
