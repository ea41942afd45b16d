"""Which sagas the sweeper's expiry (and clean-up) reads: the minutes since its last sweep, a
full scan at start, after a long gap and every ``full_scan_every`` sweeps, and the same window
again while more is due than one sweep takes; when the orphan reaper reads the open sagas."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from mercato_catalog.domain.reservations import Line, Phase, Reservation, minute_bucket
from mercato_catalog.domain.stock import Hold
from mercato_catalog.service.upkeep import MAX_WINDOW_MINUTES, ReservationUpkeep

T0 = datetime(2026, 12, 4, 8, 0, 30, tzinfo=UTC)


class RecordingSagas:
    """The store's expiry query, answering ``due`` sagas and recording what was asked."""

    def __init__(self) -> None:
        self.queries: list[list[int] | None] = []
        self.cleanup_queries: list[list[int] | None] = []
        self.due = 0

    async def due_for_expiry(
        self, now: datetime, limit: int, *, minutes: Sequence[int] | None = None
    ) -> list[Any]:
        self.queries.append(None if minutes is None else list(minutes))
        return [object()] * min(self.due, limit)

    async def due_for_cleanup(
        self, now: datetime, limit: int, *, minutes: Sequence[int] | None = None
    ) -> list[Any]:
        self.cleanup_queries.append(None if minutes is None else list(minutes))
        return []


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
    m = minute_bucket(T0)
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
    m = minute_bucket(T0)
    assert sagas.queries[1:] == [[m, m + 1, m + 2, m + 3]] * 2 + [[m + 3]]


async def test_long_gaps_and_every_nth_sweep_scan_everything() -> None:
    sagas = RecordingSagas()
    upkeep = _upkeep(sagas, full_scan_every=3)
    await upkeep.expire_due(T0, 100)  # 1: first
    await upkeep.expire_due(T0, 100)  # 2: window
    await upkeep.expire_due(T0, 100)  # 3: every third
    await upkeep.expire_due(T0 + timedelta(minutes=MAX_WINDOW_MINUTES + 1), 100)  # 4: gap
    await upkeep.expire_due(T0 + timedelta(minutes=MAX_WINDOW_MINUTES + 1), 100)  # 5: window
    m = minute_bucket(T0 + timedelta(minutes=MAX_WINDOW_MINUTES + 1))
    assert sagas.queries == [None, [minute_bucket(T0)], None, None, [m]]


async def test_clean_ups_are_read_by_the_minutes_since_the_last_sweep_like_expiries() -> None:
    sagas = RecordingSagas()
    upkeep = _upkeep(sagas, full_scan_every=3)
    await upkeep.forget_returns(T0, 100)  # first: every pending clean-up
    await upkeep.forget_returns(T0 + timedelta(seconds=75), 100)  # the minutes since
    await upkeep.forget_returns(T0 + timedelta(seconds=80), 100)  # every third: all again
    m = minute_bucket(T0)
    assert sagas.cleanup_queries == [None, [m, m + 1], None]
    assert sagas.queries == []  # apart from the expiries' window


class HoldingStore:
    """Products' holds, one page: ``holds`` by SKU."""

    def __init__(self) -> None:
        self.holds: dict[str, list[Hold]] = {}

    async def holds_page(self, after: str, limit: int) -> list[tuple[str, list[Hold]]]:
        return [(sku, holds) for sku, holds in sorted(self.holds.items()) if sku > after][:limit]

    async def forget_holding(self, sku: str) -> bool:
        """A product holding nothing any more is no longer listed."""
        del self.holds[sku]
        return True


class OpenSagas:
    """The open sagas' attempts by order id (each created at T0 unless ``created`` says
    otherwise), counting how often they are read and recording the minutes asked for."""

    def __init__(self) -> None:
        self.live: dict[str, str] = {}
        self.created: dict[str, datetime] = {}
        self.reads = 0
        self.asked: list[set[int] | None] = []

    async def live_attempts(self, created_in: Collection[int] | None = None) -> dict[str, str]:
        self.reads += 1
        self.asked.append(None if created_in is None else set(created_in))
        return {
            order: attempt
            for order, attempt in self.live.items()
            if created_in is None or minute_bucket(self.created.get(order, T0)) in created_in
        }

    async def find(self, order_id: str) -> None:
        return None  # no saga: a hold that is not in ``live`` is an orphan

    async def insert(self, saga: Reservation) -> bool:
        return True  # the sweeper's FAILED saga for an orphan's order that has none


class GivingBack:
    def __init__(self, store: HoldingStore) -> None:
        self.store = store
        self.given_back: list[str] = []

    async def unhold(self, sku: str, order_id: str, attempt: str, quantity: int) -> bool:
        self.store.holds[sku] = [h for h in self.store.holds[sku] if h.order_id != order_id]
        self.given_back.append(order_id)
        return True


async def test_orphan_passes_read_the_open_sagas_only_for_holds_not_yet_found_owned() -> None:
    sagas, store = OpenSagas(), HoldingStore()
    stock = GivingBack(store)
    upkeep = ReservationUpkeep(
        cast(Any, sagas), cast(Any, None), cast(Any, stock), cast(Any, store), recheck_owned_every=4
    )
    now = T0 + timedelta(minutes=5)

    def hold(order: str, held_at: datetime = T0) -> Hold:
        return Hold(order_id=order, quantity=1, attempt=f"{order}-a", held_at=held_at)

    sagas.live = {"o1": "o1-a", "o2": "o2-a"}
    store.holds = {"SKU-1": [hold("o1"), hold("ghost")], "SKU-2": [hold("o2")]}
    assert await upkeep.reap_orphan_holds(now, 100) == 1  # pass 1: the ghost's hold
    assert (sagas.reads, stock.given_back) == (1, ["ghost"])
    assert await upkeep.reap_orphan_holds(now, 100) == 0  # pass 2: every hold known owned
    assert sagas.reads == 1
    # A hold written again later (a straggler's, after its saga moved on) is checked afresh.
    del sagas.live["o2"]
    store.holds["SKU-2"] = [hold("o2", held_at=T0 + timedelta(minutes=1))]
    assert await upkeep.reap_orphan_holds(now, 100) == 1  # pass 3
    assert (sagas.reads, stock.given_back) == (2, ["ghost", "o2"])
    # Every fourth pass checks every hold again, known or not.
    del sagas.live["o1"]
    assert await upkeep.reap_orphan_holds(now, 100) == 1  # pass 4
    assert (sagas.reads, stock.given_back) == (3, ["ghost", "o2", "o1"])


class FoundByItself(OpenSagas):
    """Open sagas that a read by order id also finds (``find``), counting those reads."""

    def __init__(self) -> None:
        super().__init__()
        self.found_by_id: list[str] = []

    async def find(self, order_id: str) -> Any:
        self.found_by_id.append(order_id)
        created = self.created.get(order_id, T0)
        line = (Line("SKU-1", 1),)
        saga = Reservation(order_id, line, Phase.HELD, self.live[order_id], created, created, T0)
        return saga


async def test_orphan_passes_read_the_sagas_created_in_the_minutes_of_the_unknown_holds() -> None:
    sagas, store = FoundByItself(), HoldingStore()
    stock = GivingBack(store)
    upkeep = _reaper(sagas, stock, store)
    later = T0 + timedelta(minutes=10)

    def hold(order: str, held_at: datetime) -> Hold:
        return Hold(order_id=order, quantity=1, attempt=f"{order}-a", held_at=held_at)

    # o1 and o2 were created with their holds; o3's hold was taken minutes after its saga was
    # created (a retry's), so the minutes of the holds do not find it.
    sagas.live = {"o1": "o1-a", "o2": "o2-a", "o3": "o3-a"}
    sagas.created = {"o2": later, "o3": T0 - timedelta(minutes=5)}
    store.holds = {"SKU-1": [hold("o1", T0), hold("o3", later)], "SKU-2": [hold("o2", later)]}
    assert await upkeep.reap_orphan_holds(later + timedelta(minutes=1), 100) == 0
    m0, m10 = minute_bucket(T0), minute_bucket(later)
    assert sagas.asked == [{m0 - 1, m0, m10 - 1, m10}]
    # Only o3 was read by itself, and found owning its hold: nothing was given back.
    assert (sagas.found_by_id, stock.given_back) == (["o3"], [])
    # Every hold is known owned now, o3's too: the next pass reads no saga.
    assert await upkeep.reap_orphan_holds(later + timedelta(minutes=2), 100) == 0
    assert (sagas.reads, sagas.found_by_id) == (1, ["o3"])


async def test_orphan_passes_read_every_open_saga_for_holds_of_many_minutes() -> None:
    sagas, store = OpenSagas(), HoldingStore()
    stock = GivingBack(store)
    upkeep = _reaper(sagas, stock, store)
    spread = [T0 + timedelta(minutes=2 * i) for i in range(MAX_WINDOW_MINUTES)]
    orders = [f"o{i}" for i in range(len(spread))]
    sagas.live = {order: f"{order}-a" for order in orders}
    sagas.created = dict(zip(orders, spread, strict=True))
    store.holds = {
        f"SKU-{i}": [Hold(order_id=order, quantity=1, attempt=f"{order}-a", held_at=at)]
        for i, (order, at) in enumerate(zip(orders, spread, strict=True))
    }
    assert await upkeep.reap_orphan_holds(spread[-1] + timedelta(minutes=1), 100) == 0
    assert (sagas.asked, stock.given_back) == ([None], [])


class UnstoredSagas(OpenSagas):
    """No saga is open; ``late`` is the saga a late ReserveStock stores just before the
    sweeper's insert (None: nobody does). What happens is recorded in ``log``."""

    def __init__(self, late: Reservation | None = None) -> None:
        super().__init__()
        self.late = late
        self.stored: Reservation | None = None
        self.log: list[str] = []

    async def find(self, order_id: str) -> Reservation | None:  # type: ignore[override]
        return self.stored

    async def insert(self, saga: Reservation) -> bool:
        if self.late is not None:
            self.stored = self.late
            self.log.append("insert refused")
            return False
        self.stored = saga
        self.log.append(f"insert {saga.phase.value} {saga.attempt}")
        return True


def _reaper(sagas: OpenSagas, stock: GivingBack, store: HoldingStore) -> ReservationUpkeep:
    return ReservationUpkeep(cast(Any, sagas), cast(Any, None), cast(Any, stock), cast(Any, store))


class LoggedGivingBack(GivingBack):
    def __init__(self, store: HoldingStore, log: list[str]) -> None:
        super().__init__(store)
        self.log = log

    async def unhold(self, sku: str, order_id: str, attempt: str, quantity: int) -> bool:
        self.log.append(f"unhold {attempt}")
        return await super().unhold(sku, order_id, attempt, quantity)


async def test_a_hold_whose_order_has_no_saga_is_given_back_after_storing_its_attempt_failed() -> (
    None
):
    # A first attempt holds before its saga is stored; its caller died in between. The sweeper
    # stores the attempt FAILED first, so the caller, were it only late, could not store a saga
    # claiming the hold given back.
    sagas, store = UnstoredSagas(), HoldingStore()
    stock = LoggedGivingBack(store, sagas.log)
    upkeep = ReservationUpkeep(
        cast(Any, sagas), cast(Any, None), cast(Any, stock), cast(Any, store)
    )
    store.holds = {"SKU-1": [Hold(order_id="o1", quantity=1, attempt="a1", held_at=T0)]}
    assert await upkeep.reap_orphan_holds(T0 + timedelta(minutes=5), 100) == 1
    assert sagas.log == ["insert FAILED a1", "unhold a1"]
    assert sagas.stored is not None
    assert sagas.stored.lines == ()


async def test_a_hold_whose_saga_is_stored_meanwhile_by_its_late_caller_stays() -> None:
    late = Reservation("o1", (Line("SKU-1", 1),), Phase.HELD, "a1", T0, T0, T0 + timedelta(1))
    sagas, store = UnstoredSagas(late=late), HoldingStore()
    stock = LoggedGivingBack(store, sagas.log)
    upkeep = ReservationUpkeep(
        cast(Any, sagas), cast(Any, None), cast(Any, stock), cast(Any, store)
    )
    store.holds = {"SKU-1": [Hold(order_id="o1", quantity=1, attempt="a1", held_at=T0)]}
    assert await upkeep.reap_orphan_holds(T0 + timedelta(minutes=5), 100) == 0
    assert sagas.log == ["insert refused"]
