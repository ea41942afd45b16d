"""ReserveStock holds an order's lines concurrently and stores a new order's saga once, as it
ends; a refused line gives every hold back, and so does a new order that has a saga already."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from mercato_catalog.domain.errors import ShortageKind, StockUnavailable
from mercato_catalog.domain.products import Money, Product, ProductState
from mercato_catalog.domain.reservations import Line, Move, Phase, Reservation
from mercato_catalog.domain.stock import Hold, HoldOutcome, HoldResult
from mercato_catalog.service.reservations import ReservationService

NOW = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)


def _product(sku: str) -> Product:
    return Product(
        sku=sku,
        name="Mug",
        description="",
        category_id="",
        price=Money("EUR", 1299),
        attributes={},
        state=ProductState.ACTIVE,
        stock_on_hand=10,
        stock_reserved=1,
        etag='W/"1"',
        version=2,
        create_time=NOW,
        update_time=NOW,
    )


class Sagas:
    """Every insert (unless ``stored``: the order has that saga already) and every move
    succeeds; the phases stored and moved through are recorded, with the events written."""

    def __init__(self, stored: Reservation | None = None) -> None:
        self.phases: list[Phase] = []
        self.events: list[Any] = []
        self.stored = stored

    async def insert(self, saga: Reservation, events: Sequence[Any] = ()) -> bool:
        if self.stored is not None:
            return False
        self.phases.append(saga.phase)
        self.events.extend(events)
        return True

    async def find(self, order_id: str) -> Reservation | None:
        return self.stored

    async def move(self, move: Move, events: Sequence[Any] = ()) -> Reservation:
        self.phases.append(move.after.phase)
        self.events.extend(events)
        return move.after


class Stock:
    """Holds that each wait until ``together`` of them are in flight (at most 1 s), refusing
    the SKUs in ``short``; gives back are recorded."""

    def __init__(self, together: int, short: frozenset[str] = frozenset()) -> None:
        self.in_flight = 0
        self.most_in_flight = 0
        self._together = together
        self._all_in = asyncio.Event()
        self.short = short
        self.given_back: list[str] = []

    async def hold(self, sku: str, order_id: str, quantity: int, attempt: str) -> HoldResult:
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        if self.in_flight >= self._together:
            self._all_in.set()
        try:
            await asyncio.wait_for(self._all_in.wait(), 1.0)
        finally:
            self.in_flight -= 1
        if sku in self.short:
            return HoldResult.refused(ShortageKind.OUT_OF_STOCK)
        return HoldResult(HoldOutcome.HELD, product=_product(sku))

    async def unhold(self, sku: str, order_id: str, attempt: str, quantity: int) -> bool:
        self.given_back.append(sku)
        return True


class HeldByAnotherAttempt(Stock):
    """``SKU-B`` is held for the order by attempt ``earlier`` (its saga's), the others are free."""

    def __init__(self) -> None:
        super().__init__(together=1)
        self.other = Hold("order", 1, "earlier", NOW)

    async def hold(self, sku: str, order_id: str, quantity: int, attempt: str) -> HoldResult:
        if sku == "SKU-B" and attempt != "earlier":
            return HoldResult(HoldOutcome.CONFLICT, self.other)
        return await super().hold(sku, order_id, quantity, attempt)


class Products:
    async def batch_get(self, skus: Sequence[str]) -> dict[str, Product]:
        return {sku: _product(sku) for sku in skus}


def _service(stock: Stock, sagas: Sagas) -> ReservationService:
    return ReservationService(
        cast(Any, sagas), cast(Any, stock), cast(Any, None), ttl=timedelta(minutes=15)
    )


async def test_the_lines_are_held_at_once_and_answered_in_line_order() -> None:
    stock, sagas = Stock(together=3), Sagas()
    lines = [Line("SKU-C", 1), Line("SKU-A", 2), Line("SKU-B", 1)]
    reserved = await _service(stock, sagas).reserve(str(uuid.uuid4()), lines)
    assert stock.most_in_flight == 3  # sequential holds would each have waited out the 1 s
    assert [p.sku for p in reserved.products] == ["SKU-C", "SKU-A", "SKU-B"]
    # A new order is stored once, HELD with its event, after its holds.
    assert sagas.phases == [Phase.HELD]
    assert [event.type for event in sagas.events] == ["mercato.catalog.events.v1.StockReserved"]
    assert reserved.reservation.phase is Phase.HELD


async def test_at_most_eight_holds_are_in_flight() -> None:
    stock, sagas = Stock(together=8), Sagas()
    lines = [Line(f"SKU-{n:02d}", 1) for n in range(20)]
    reserved = await _service(stock, sagas).reserve(str(uuid.uuid4()), lines)
    assert stock.most_in_flight == 8
    assert len(reserved.products) == 20


async def test_a_refused_line_gives_back_every_hold_of_the_attempt() -> None:
    stock, sagas = Stock(together=3, short=frozenset({"SKU-B"})), Sagas()
    lines = [Line("SKU-A", 1), Line("SKU-B", 5), Line("SKU-C", 1)]
    with pytest.raises(StockUnavailable) as refused:
        await _service(stock, sagas).reserve(str(uuid.uuid4()), lines)
    assert [(s.sku, s.kind) for s in refused.value.shortages] == [
        ("SKU-B", ShortageKind.OUT_OF_STOCK)
    ]
    # Only the lines held are given back, then the saga is stored FAILED with the shortage.
    assert sorted(stock.given_back) == ["SKU-A", "SKU-C"]
    assert sagas.phases == [Phase.FAILED]
    assert sagas.events == []


async def test_a_new_order_that_has_a_saga_gives_back_its_holds_and_answers_the_saga() -> None:
    # The order is HELD already (an earlier call): this call's holds, taken before its insert
    # was refused, go back, and the stored reservation is the answer.
    order = str(uuid.uuid4())
    lines = (Line("SKU-A", 1), Line("SKU-C", 1))
    earlier = Reservation(order, lines, Phase.HELD, "earlier", NOW, NOW, NOW + timedelta(hours=1))
    stock, sagas = Stock(together=2), Sagas(stored=earlier)
    service = ReservationService(
        cast(Any, sagas), cast(Any, stock), cast(Any, Products()), ttl=timedelta(minutes=15)
    )
    reserved = await service.reserve(order, list(lines))
    assert sorted(stock.given_back) == ["SKU-A", "SKU-C"]
    assert reserved.reservation is earlier
    assert [p.sku for p in reserved.products] == ["SKU-A", "SKU-C"]
    assert sagas.phases == []


async def test_a_new_order_never_takes_over_a_hold_of_another_attempt() -> None:
    # A line held by another attempt of the order (a concurrent first call, or a saga this
    # call has not read): the new attempt gives back what it took and reads the saga instead
    # of giving the other attempt's hold back. Here the saga is HELD by that attempt.
    order = str(uuid.uuid4())
    lines = (Line("SKU-A", 1), Line("SKU-B", 1))
    earlier = Reservation(order, lines, Phase.HELD, "earlier", NOW, NOW, NOW + timedelta(hours=1))
    stock, sagas = HeldByAnotherAttempt(), Sagas(stored=earlier)
    service = ReservationService(
        cast(Any, sagas), cast(Any, stock), cast(Any, Products()), ttl=timedelta(minutes=15)
    )
    reserved = await service.reserve(order, list(lines))
    assert stock.given_back == ["SKU-A"]  # its own hold only, never SKU-B's
    assert reserved.reservation is earlier
    assert sagas.phases == []
