"""The sweeper's use cases: expire reservations past their deadline, finish steps whose caller
died, drop old return markers, give back orphan holds. Each is safe in every replica at once:
every write is a guarded single-document update, so no step is applied twice."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import datetime

from mercato_catalog.domain.reservations import abandoned, minute_bucket, owns
from mercato_catalog.domain.stock import Hold
from mercato_catalog.service.reservations import ReservationService
from mercato_catalog.service.stock import StockMovements
from mercato_catalog.store import ReservationStore, StockStore, utcnow

__all__ = ["MAX_WINDOW_MINUTES", "ReservationUpkeep"]

# Minutes since the last sweep read one by one; a longer gap (a stopped process) scans instead.
MAX_WINDOW_MINUTES = 30

log = logging.getLogger("mercato_catalog.reservations")


class ReservationUpkeep:
    def __init__(
        self,
        sagas: ReservationStore,
        reservations: ReservationService,
        stock: StockMovements,
        stock_store: StockStore,
        *,
        full_scan_every: int = 60,
        recheck_owned_every: int = 10,
    ) -> None:
        self._sagas = sagas
        self._reservations = reservations
        self._stock = stock
        self._stock_store = stock_store
        self._expiries = _MinuteWindow(full_scan_every)
        self._cleanups = _MinuteWindow(full_scan_every)
        # The holds (with their SKU) that the last orphan pass found owned by their saga, and
        # how often a pass checks every hold again regardless (see reap_orphan_holds).
        self._owned: set[tuple[str, Hold]] = set()
        self._recheck_owned_every = max(recheck_owned_every, 1)
        self._orphan_passes = 0

    async def expire_due(self, now: datetime, limit: int) -> int:
        """Expire reservations past their deadline that were never committed.

        Normally only the minutes since the last sweep are read (by equality, see
        ``ReservationStore.due_for_expiry``), so a sweep costs the same with 20 or 20,000 sagas
        held; the first sweep, a gap longer than :data:`MAX_WINDOW_MINUTES` and every
        ``full_scan_every``-th sweep read every held saga instead, which also finds sagas stored
        before ``expire_minute`` existed or by a replica whose clock lags.
        """
        current = minute_bucket(now)
        due = await self._sagas.due_for_expiry(now, limit, minutes=self._expiries.next(current))
        count = 0
        for saga in due:
            if await self._reservations.expire(saga):
                count += 1
        if len(due) < limit:
            self._expiries.done_until(current)
        return count

    async def finish_stuck(self, older_than: datetime, limit: int) -> int:
        """Complete steps whose caller died half-way."""
        stuck = await self._sagas.stuck(older_than, limit)
        for saga in stuck:
            await self._reservations.finish(saga)
        return len(stuck)

    async def forget_returns(self, now: datetime, limit: int) -> int:
        """Drop the ``returns`` markers of releases older than the retention.

        Read like the expirations: the minutes since the last sweep (``cleanup_minute``, by
        equality), not every release still within its retention each sweep (the releases of
        sold units of the last hour, read in full every few seconds); the first sweep, a long
        gap and every ``full_scan_every``-th sweep read every pending clean-up, which also finds
        those stored before ``cleanup_minute`` existed.
        """
        current = minute_bucket(now)
        due = await self._sagas.due_for_cleanup(now, limit, minutes=self._cleanups.next(current))
        for saga in due:
            for line in saga.lines:
                await self._stock.forget_return(line.sku, saga.order_id)
            await self._sagas.clear_cleanup(saga.order_id)
        if len(due) < limit:
            self._cleanups.done_until(current)
        return len(due)

    async def reap_orphan_holds(self, older_than: datetime, limit: int) -> int:
        """Give back product holds older than ``older_than`` whose saga does not own them
        (crashed stragglers).

        The open sagas' attempts are read once per pass (equality queries), not each hold's
        saga by itself: a hold they own is left alone, and only the others (orphans, or a saga
        that moved meanwhile) are checked against their saga's current state before being given
        back. After a load thousands of holds are legitimate, and one read of a saga each was
        thousands of queries a pass.

        A hold found owned stays known as owned while it lasts, and its saga is not read again:
        a saga leaves the live phases only through a step (commit, release, expiry, failure)
        that gives its holds back itself, or that ``finish_stuck`` completes if its caller died;
        a straggler's hold written later is another hold (its own ``held_at``), checked afresh.
        So after a load the open sagas are read once, not every pass while they stay open (a
        read returns every held saga, thousands after a load, in full from FerretDB). Every
        ``recheck_owned_every``-th pass checks every hold again all the same.

        Nor are all the open sagas read for the holds not yet known: only those created in the
        minutes the holds were taken and the minute before each (a saga is created before its
        holds), one equality query per phase and minute. Under steady traffic a pass then reads
        the sagas of the last minute's orders, not every unpaid order of the reservation TTL
        (measured: a pass finding 20 new holds among 2,346 open sagas took 0.97 s of FerretDB
        CPU before, 0.19 s after, 0.15 s of it the products' holds that every pass reads). A
        hold whose saga was created earlier (a retry's, minutes later) is not found there and
        is checked against its saga by itself, as any other, and then known as owned too.
        Holds taken over more than :data:`MAX_WINDOW_MINUTES` minutes read every open saga
        instead.

        The products read are those marked holding (``StockStore.holds_page``); one that holds
        nothing any more loses the mark.
        """
        self._orphan_passes += 1
        known = set() if self._orphan_passes % self._recheck_owned_every == 0 else self._owned
        owned: set[tuple[str, Hold]] = set()
        reaped = 0
        after = ""
        live = _LiveAttempts(self._sagas)
        while True:
            page = await self._stock_store.holds_page(after, limit)
            unknown: list[tuple[str, Hold]] = []
            for sku, holds in page:
                if not holds:
                    await self._stock_store.forget_holding(sku)
                for hold in holds:
                    if not hold.older_than(older_than):
                        continue
                    if (sku, hold) in known:
                        owned.add((sku, hold))
                    else:
                        unknown.append((sku, hold))
            await live.read_for(hold for _, hold in unknown)
            for sku, hold in unknown:
                # Owned when the pass began, or when its saga was read by itself: an orphan
                # only if a step died.
                owned_at_start = live.attempts.get(hold.order_id) == hold.attempt
                if owned_at_start or await self._owned_by_its_saga(hold):
                    owned.add((sku, hold))
                    continue
                reaped += await self._give_back(sku, hold)
            if len(page) < limit:
                self._owned = owned
                return reaped
            after = page[-1][0]

    async def _owned_by_its_saga(self, hold: Hold) -> bool:
        """Whether the hold's saga, read now, owns it."""
        saga = await self._sagas.find(hold.order_id)
        if saga is None:
            # A first attempt's hold whose ReserveStock never stored the saga (it stores it
            # after its holds). Store the attempt as abandoned first: a caller that is only late
            # then finds its insert refused, and cannot claim a hold given back here.
            if await self._sagas.insert(abandoned(hold.order_id, hold.attempt, utcnow())):
                log.warning(
                    "abandoned a reservation never stored",
                    extra={"order_id": hold.order_id},
                )
            saga = await self._sagas.find(hold.order_id)
        return owns(saga, hold)

    async def _give_back(self, sku: str, hold: Hold) -> bool:
        if not await self._stock.unhold(sku, hold.order_id, hold.attempt, hold.quantity):
            return False
        log.warning("reaped an orphan hold", extra={"sku": sku, "order_id": hold.order_id})
        return True


class _LiveAttempts:
    """The attempts of the open sagas read so far in one orphan pass: those created in the
    minutes of the holds asked about (and the minute before each), or every open saga once more
    than :data:`MAX_WINDOW_MINUTES` minutes are asked about."""

    def __init__(self, sagas: ReservationStore) -> None:
        self._sagas = sagas
        self._minutes: set[int] = set()
        self._all = False
        self.attempts: dict[str, str] = {}

    async def read_for(self, holds: Iterable[Hold]) -> None:
        if self._all:
            return
        wanted: set[int] = set()
        for hold in holds:
            if hold.held_at is not None:
                taken = minute_bucket(hold.held_at)
                wanted.update((taken - 1, taken))
        wanted -= self._minutes
        if not wanted:
            return
        if len(self._minutes) + len(wanted) > MAX_WINDOW_MINUTES:
            self.attempts = await self._sagas.live_attempts()
            self._all = True
            return
        self.attempts.update(await self._sagas.live_attempts(wanted))
        self._minutes |= wanted


class _MinuteWindow:
    """Which minutes a sweep reads of something due by minute (expirations, clean-ups): those
    since the minute everything was last done up to, or everything (None) at the first sweep,
    after a gap longer than :data:`MAX_WINDOW_MINUTES` and every ``full_scan_every``-th sweep
    (which also finds what was stored without its minute, or by a replica whose clock lags)."""

    def __init__(self, full_scan_every: int) -> None:
        self._full_scan_every = max(full_scan_every, 1)
        self._from: int | None = None
        self._sweeps = 0

    def next(self, current: int) -> range | None:
        self._sweeps += 1
        start = self._from
        if (
            start is None
            or current - start > MAX_WINDOW_MINUTES
            or self._sweeps % self._full_scan_every == 0
        ):
            return None
        return range(start, current + 1)

    def done_until(self, current: int) -> None:
        """Everything due up to ``current`` is done: later sweeps start at this minute (not the
        next: what falls due later in this minute is not due yet)."""
        self._from = current
