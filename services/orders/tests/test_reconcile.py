"""Where the reconciler's orphan scans start, over a catalog and a store in memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any, cast

from prometheus_client import CollectorRegistry

from mercato_orders.clients import ReservationInfo, ReservationState
from mercato_orders.service.base import OrdersConfig, OrdersMetrics
from mercato_orders.service.reconcile import Reconciliation

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
PAGE = 100


def held(order_id: str, created: datetime) -> ReservationInfo:
    return ReservationInfo(order_id, ReservationState.HELD, (), create_time=created)


@dataclass
class Orphans:
    """Catalog, store and service of the orphan scan: every reservation is an orphan (no
    order, no create in progress); the releases of ``failing`` fail."""

    reservations: list[ReservationInfo]
    clock: datetime
    failing: set[str] = field(default_factory=set)
    asked: list[datetime | None] = field(default_factory=list)
    released: list[str] = field(default_factory=list)
    metrics: OrdersMetrics = field(default_factory=lambda: OrdersMetrics(CollectorRegistry()))
    config: OrdersConfig = field(default_factory=OrdersConfig)

    def now(self) -> datetime:
        return self.clock

    async def held_before(
        self, before: datetime, token: str = "", *, created_after: datetime | None = None
    ) -> tuple[list[ReservationInfo], str]:
        if not token:
            self.asked.append(created_after)
        start = int(token or 0)
        found = [
            r
            for r in self.reservations
            if r.order_id not in self.released
            and r.create_time is not None
            and r.create_time < before
            and (created_after is None or r.create_time >= created_after)
        ]
        page = found[start : start + PAGE]
        return page, str(start + PAGE) if start + PAGE < len(found) else ""

    async def release_stock(self, order_id: str, reason: str) -> None:
        if order_id in self.failing:
            raise ConnectionError("catalog unavailable")
        self.released.append(order_id)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[Any]:
        async def nothing(*args: Any, **kwargs: Any) -> Any:
            return {} if args and isinstance(args[0], list) else []

        async def none_deleted(**kwargs: Any) -> int:
            return 0

        yield SimpleNamespace(
            orders=SimpleNamespace(states=nothing, owed=nothing, confirmed_before=nothing),
            keys=SimpleNamespace(
                claim_abandoned=nothing, pending_order_ids=nothing, delete_expired=none_deleted
            ),
        )

    def reconciler(self, **options: Any) -> Reconciliation:
        self.catalog = self
        self.store = self
        return Reconciliation(
            cast(Any, self), retry_after=timedelta(seconds=1), orphan_grace=timedelta(0), **options
        )


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def test_a_scan_starts_where_the_previous_one_ended() -> None:
    world = Orphans([held("a", at(1))], clock=at(10))
    reconciler = world.reconciler(full_orphan_scan_every=2)
    await reconciler.run_once(full=True)
    world.reservations.append(held("b", at(20)))
    world.clock = at(30)
    report = await reconciler.run_once(full=True)
    world.clock = at(40)
    await reconciler.run_once(full=True)
    assert world.asked == [None, at(10), None]  # every second scan reads them all
    assert (report.orphans_released, world.released) == (1, ["a", "b"])


async def test_a_scan_stopped_at_its_page_limit_goes_on_from_its_last_reservation() -> None:
    world = Orphans([held(f"o{i:03d}", at(i)) for i in range(250)], clock=at(300))
    world.failing = {f"o{i:03d}" for i in range(250)}  # all stay held: only the pages move on
    reconciler = world.reconciler(max_scan_pages=1)
    await reconciler.run_once(full=True)
    world.failing.clear()
    await reconciler.run_once(full=True)
    assert world.asked == [None, at(0)]  # a failed release is read again, from the oldest
    assert len(world.released) == PAGE
    await reconciler.run_once(full=True)
    assert world.asked[-1] == at(PAGE - 1)  # the last one the stopped scan read
    assert world.released[-1] == f"o{2 * PAGE - 1:03d}"
