"""The reservation use cases: ReserveStock, CommitReservation, ReleaseStock, the reads, expiry.

An order's reservation is a saga of single-document updates, no transactions (the phases and
steps are in ``domain.reservations``). ReserveStock of a new order reads::

    every line at once: stock.hold(line)            (each one guarded update of one product)
    all held      → store.insert(domain.held_first, StockReserved)        → HELD, with the
                    products as the holds wrote them (the caller prices the order at them)
    one refused   → give the holds back → store.insert(domain.failed_first) → FAILED,
                    STOCK_UNAVAILABLE
    insert refused (the order has a saga: a retry, a concurrent call, a release, the sweeper's)
                  → give the holds back → store.find and resume, return, retry or refuse it

A retry after FAILED, and a saga found RESERVING, run an attempt on the stored saga instead::

    store.move(domain.retry) → RESERVING, holds, store.move(domain.hold_all, StockReserved) → HELD
    one refused   → store.move(domain.fail) → give the holds back → store.move(domain.settle)

Every move is guarded by the phase and attempt it was read in, so exactly one caller makes it;
the step it starts is idempotent per product, so a retry, a concurrent caller or the sweeper
(``finish``) completes it after a crash. A product hold is legitimate only while its saga is
RESERVING, HELD or COMMITTING with the same attempt; anything else is an orphan: callers give
back their own and the sweeper reaps the rest. A new order's holds have no saga until its
insert: one whose caller died before the insert is an orphan too, and the sweeper stores a
FAILED saga for its attempt (``domain.abandoned``) before giving it back, so that a caller that
was only late finds its insert refused. Returning committed units is guarded by a
``returns.<order>`` marker on the product, kept for ``return_marker_retention`` after the
release and then dropped by the sweeper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import KW_ONLY, dataclass
from datetime import datetime, timedelta

from mercato_catalog import publish
from mercato_catalog.domain.errors import (
    Shortage,
    StockUnavailable,
    reservation_busy,
    reservation_closed,
    reservation_mismatch,
    reservation_not_found,
)
from mercato_catalog.domain.listing import ReservationFilter
from mercato_catalog.domain.products import Product
from mercato_catalog.domain.reservations import (
    Line,
    Phase,
    ReleaseCause,
    Reservation,
    begin,
    fail,
    failed_first,
    held_first,
    hold_all,
    released_unreserved,
    retry,
    same_lines,
    settle,
    start_commit,
    start_expiry,
    start_release,
)
from mercato_catalog.domain.stock import HoldOutcome, HoldResult, shortage
from mercato_catalog.service.stock import StockMovements
from mercato_catalog.store import ProductStore, ReservationStore, utcnow
from mercato_common.kafka.envelope import Envelope

__all__ = ["ReservationService", "Reserved"]

_LOOP = 6  # bound on re-reads when racing other callers of the same order
# Holds of one reservation sent at once: a 100-line order does not take 100 store connections.
_HOLDS_IN_FLIGHT = 8


@dataclass(frozen=True, slots=True)
class Reserved:
    """What ReserveStock answers: the reservation, and its lines' products in line order (as
    this call's holds wrote them, or read again when an earlier call had held them)."""

    reservation: Reservation
    products: tuple[Product, ...]


@dataclass(eq=False)
class ReservationService:
    sagas: ReservationStore
    stock: StockMovements
    products: ProductStore
    _: KW_ONLY
    ttl: timedelta
    return_marker_retention: timedelta = timedelta(hours=1)

    # --- reads -------------------------------------------------------------------------------

    async def get(self, order_id: str) -> Reservation:
        saga = await self.sagas.find(order_id)
        if saga is None or saga.state is None:
            raise reservation_not_found(order_id)
        return saga

    async def list_page(
        self, flt: ReservationFilter, size: int, token: str
    ) -> tuple[list[Reservation], str]:
        return await self.sagas.list_page(flt, size, token)

    # --- ReserveStock ------------------------------------------------------------------------

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reserved:
        # A new order, the usual case, holds its lines and is then stored in one insert (no
        # read first); the insert is refused when the order has a saga already, which is then
        # read and resumed.
        reserved = await self._reserve_new(begin(order_id, lines, utcnow(), self.ttl))
        if reserved is not None:
            return reserved
        for _ in range(_LOOP):
            saga = await self.sagas.find(order_id)
            if saga is None:
                saga = begin(order_id, lines, utcnow(), self.ttl)
                if await self.sagas.insert(saga):
                    return await self._run_attempt(saga)
                continue  # a concurrent call for the same order created it: re-read
            phase = saga.phase
            if phase.closed:
                await self.finish(saga)
                raise reservation_closed(order_id)
            if phase in (Phase.RESERVING, Phase.HELD, Phase.COMMITTING, Phase.COMMITTED):
                if not same_lines(saga.lines, lines):
                    raise reservation_mismatch(order_id)
                if phase is Phase.RESERVING:
                    return await self._run_attempt(saga)  # resume the same attempt
                return await self._with_products(await self.finish(saga))
            if phase is Phase.FAILING:
                await self.finish(saga)
                continue
            # FAILED: nothing is held; try again as a new attempt with these lines.
            fresh = await self.sagas.move(retry(saga, lines, utcnow(), self.ttl))
            if fresh is not None:
                return await self._run_attempt(fresh)
        raise reservation_busy(order_id)

    async def _with_products(self, saga: Reservation) -> Reserved:
        """A reservation held by an earlier call, with its lines' products read now."""
        found = await self.products.batch_get([line.sku for line in saga.lines])
        return Reserved(saga, tuple(found[line.sku] for line in saga.lines if line.sku in found))

    async def _reserve_new(self, saga: Reservation) -> Reserved | None:
        """The first attempt of an order with no saga yet (``saga`` is not stored): hold every
        line, then store the saga HELD with StockReserved, or, when a line is refused, give the
        holds back and store it FAILED (STOCK_UNAVAILABLE). One insert instead of an insert and
        a move per order.

        None when the order turns out to have a saga (the insert is refused) or another attempt
        of it holds a line: every hold this call took is given back first, and the caller reads
        the saga. A failure or cancellation between the holds and the insert leaves holds that
        no saga owns: the sweeper reaps them (``ReservationUpkeep``)."""
        results = await self._hold_lines(saga, take_over=False)
        held = [line for line, result in zip(saga.lines, results, strict=True) if result.holds]
        if any(result.outcome is HoldOutcome.CONFLICT for result in results):
            await self._give_back(saga, held)
            return None
        shortages = _shortages(saga.lines, results)
        now = utcnow()
        if shortages:
            await self._give_back(saga, held)
            if await self.sagas.insert(failed_first(saga, shortages, now)):
                raise StockUnavailable(shortages)
            return None
        stored = held_first(saga, now)
        expire_time = stored.expire_time or now + self.ttl
        event = publish.stock_reserved(saga.order_id, saga.lines, expire_time, now)
        if await self.sagas.insert(stored, [event]):
            return Reserved(stored, _products(results))
        await self._give_back(saga, held)
        return None

    async def _run_attempt(self, saga: Reservation) -> Reserved:
        """Hold every line of the stored saga's attempt, then HELD (with StockReserved); or,
        when a line is refused, give back what was held and answer STOCK_UNAVAILABLE."""
        results = await self._hold_lines(saga, take_over=True)
        shortages, products = _shortages(saga.lines, results), _products(results)
        now = utcnow()
        if shortages:
            failing = await self.sagas.move(fail(saga, shortages, now))
            if failing is not None:
                await self.finish(failing)
                raise StockUnavailable(shortages)
        else:
            expire_time = saga.expire_time or now + self.ttl
            event = publish.stock_reserved(saga.order_id, saga.lines, expire_time, now)
            held = await self.sagas.move(hold_all(saga, now), [event])
            if held is not None:
                return Reserved(held, products)
        won = await self._after_lost_race(saga)
        return Reserved(won, products) if not shortages else await self._with_products(won)

    async def _hold_lines(self, saga: Reservation, *, take_over: bool) -> list[HoldResult]:
        """Hold the lines, :data:`_HOLDS_IN_FLIGHT` at a time: each line's outcome, in line
        order (HELD, ALREADY, REFUSED; CONFLICT only without ``take_over``).

        Each hold is its own guarded update of its own product, so they need no order between
        them, and a two-line order waits for one store round trip instead of two. When a line is
        refused, the caller gives back every hold of the attempt, as it does after a crash
        half-way. A failure of one hold is raised once every other hold has finished, so no
        hold of the attempt is still running when the caller decides what to do.
        """
        gate = asyncio.Semaphore(_HOLDS_IN_FLIGHT)

        async def hold(line: Line) -> HoldResult:
            async with gate:
                return await self._hold_line(saga, line, take_over=take_over)

        results: list[HoldResult] = []
        for outcome in await asyncio.gather(*map(hold, saga.lines), return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
            results.append(outcome)
        return results

    async def _hold_line(self, saga: Reservation, line: Line, *, take_over: bool) -> HoldResult:
        """Hold one line for the saga's attempt. A hold of another attempt of the same order
        (CONFLICT) is an orphan when the saga is stored with this attempt (``take_over``): the
        saga moved on, so it is given back and ours taken."""
        order_id, attempt = saga.order_id, saga.attempt
        result = await self.stock.hold(line.sku, order_id, line.quantity, attempt)
        if result.outcome is HoldOutcome.CONFLICT and take_over:
            if result.other is not None:
                other = result.other
                await self.stock.unhold(line.sku, order_id, other.attempt, other.quantity)
            result = await self.stock.hold(line.sku, order_id, line.quantity, attempt)
            if result.outcome is HoldOutcome.CONFLICT:
                raise reservation_busy(order_id)
        return result

    async def _after_lost_race(self, mine: Reservation) -> Reservation:
        """Our attempt's final move lost: see who won, and undo our holds if needed."""
        order_id = mine.order_id
        current = await self.sagas.find(order_id)
        if current is None:  # cannot happen: sagas are never deleted
            raise reservation_busy(order_id)
        same_attempt = current.attempt == mine.attempt
        if same_attempt and current.phase in (Phase.HELD, Phase.COMMITTING, Phase.COMMITTED):
            return current  # a concurrent call of the same attempt completed it
        if not (same_attempt and current.phase.holds_are_live):
            # Holds we took after the saga moved on are orphans: give them back now.
            await self._give_back_holds(mine)
        if current.phase in (Phase.FAILING, Phase.FAILED) and same_attempt:
            raise StockUnavailable((await self.finish(current)).shortages)
        if current.phase.closed:
            await self.finish(current)
            raise reservation_closed(order_id)
        raise reservation_busy(order_id)

    # --- CommitReservation -------------------------------------------------------------------

    async def commit(self, order_id: str) -> Reservation:
        for _ in range(_LOOP):
            saga = await self.sagas.find(order_id)
            if saga is None:
                raise reservation_not_found(order_id)
            phase = saga.phase
            if phase in (Phase.COMMITTED, Phase.COMMITTING):
                return await self.finish(saga)
            if phase is Phase.HELD:
                now = utcnow()
                if saga.expired(now):
                    await self.expire(saga)
                    raise reservation_closed(order_id)
                committing = await self.sagas.move(start_commit(saga, now))
                if committing is not None:
                    return await self.finish(committing)
                continue
            if phase is Phase.RESERVING:
                raise reservation_busy(order_id)
            await self.finish(saga)
            raise reservation_closed(order_id)
        raise reservation_busy(order_id)

    # --- ReleaseStock ------------------------------------------------------------------------

    async def release(self, order_id: str, reason: str) -> Reservation:
        for _ in range(_LOOP):
            saga = await self.sagas.find(order_id)
            if saga is None:
                # Record the release, so that a ReserveStock arriving later reserves nothing.
                closed = released_unreserved(order_id, reason, utcnow())
                if await self.sagas.insert(closed):
                    return closed
                continue
            phase = saga.phase
            if phase in (Phase.RELEASED, Phase.EXPIRED):
                return saga
            if phase in (Phase.RELEASING, Phase.EXPIRING):
                return await self.finish(saga)
            if phase in (Phase.COMMITTING, Phase.FAILING):
                await self.finish(saga)
                continue
            moved = await self.sagas.move(start_release(saga, reason, utcnow()))
            if moved is not None:
                return await self.finish(moved)
        raise reservation_busy(order_id)

    # --- steps -------------------------------------------------------------------------------

    async def expire(self, saga: Reservation) -> bool:
        """Expire a saga past its deadline (False: it moved on meanwhile)."""
        moved = await self.sagas.move(start_expiry(saga, utcnow()))
        if moved is None:
            return False
        await self.finish(moved)
        return True

    async def finish(self, saga: Reservation) -> Reservation:
        """Complete the step a saga is in (after a crash, or when found half-way): move the
        stock, then settle the saga with its event. A saga in no step is returned as it is."""
        if not saga.phase.in_step:
            return saga
        order_id = saga.order_id
        if saga.phase is Phase.COMMITTING:
            for line in saga.lines:
                await self.stock.sell(line.sku, order_id, saga.attempt, line.quantity)
        elif saga.returns_sold_units:
            for line in saga.lines:
                await self.stock.give_back(line.sku, order_id, line.quantity)
        else:
            await self._give_back_holds(saga)
        now = utcnow()
        step = settle(saga, now, self.return_marker_retention)
        done = await self.sagas.move(step, self._settled_events(saga, step.after.phase, now))
        if done is None:  # someone else finished it first
            return await self.sagas.find(order_id) or saga
        return done

    def _settled_events(self, saga: Reservation, settled: Phase, now: datetime) -> list[Envelope]:
        """StockCommitted after a commit; StockReleased after a release or expiry of stock
        that was reserved or sold (a failed attempt, or a release of nothing, is no event)."""
        if settled is Phase.COMMITTED:
            return [publish.stock_committed(saga.order_id, saga.lines, now)]
        if settled is Phase.FAILED or not saga.moved_stock or not saga.lines:
            return []
        return [
            publish.stock_released(
                saga.order_id,
                saga.lines,
                cause=saga.cause or ReleaseCause.REQUESTED,
                was_committed=saga.was_committed,
                reason=saga.reason,
                when=now,
            )
        ]

    async def _give_back_holds(self, saga: Reservation) -> None:
        """Release every hold of the saga's attempt (idempotent per product)."""
        await self._give_back(saga, saga.lines)

    async def _give_back(self, saga: Reservation, lines: Sequence[Line]) -> None:
        """Release the holds of ``lines`` taken by the saga's attempt (idempotent per product)."""
        for line in lines:
            await self.stock.unhold(line.sku, saga.order_id, saga.attempt, line.quantity)


def _shortages(lines: Sequence[Line], results: Sequence[HoldResult]) -> list[Shortage]:
    """The refused lines' shortages, in line order."""
    return [
        shortage(line.sku, result.refusal)
        for line, result in zip(lines, results, strict=True)
        if result.refusal is not None
    ]


def _products(results: Sequence[HoldResult]) -> tuple[Product, ...]:
    """The products of the held lines, in line order, as their holds wrote (or read) them."""
    return tuple(result.product for result in results if result.product is not None)
