"""The domain's state changes: stock movements, product writes, and the saga's steps."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from mercato_catalog.domain.errors import (
    EtagMismatch,
    ProductArchived,
    ShortageKind,
    StockLimitExceeded,
    StockUnavailable,
)
from mercato_catalog.domain.products import (
    Money,
    Product,
    ProductChanges,
    ProductState,
    archived,
    changed,
    check_etag,
)
from mercato_catalog.domain.reservations import (
    Line,
    Move,
    Phase,
    ReleaseCause,
    begin,
    owns,
    released_unreserved,
    retry,
    settle,
    start_expiry,
    start_release,
)
from mercato_catalog.domain.stock import (
    Hold,
    HoldOutcome,
    HoldResult,
    StockChange,
    adjusted,
    hold_refusal,
)

NOW = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
LATER = NOW + timedelta(minutes=1)


def _product(**overrides: object) -> Product:
    values: dict[str, object] = {
        "sku": "SKU-1",
        "name": "Mug",
        "description": "",
        "category_id": "",
        "price": Money("EUR", 1299),
        "attributes": {},
        "state": ProductState.ACTIVE,
        "stock_on_hand": 10,
        "stock_reserved": 3,
        "etag": 'W/"2"',
        "version": 7,
        "create_time": NOW,
        "update_time": NOW,
    }
    values.update(overrides)
    return Product(**values)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("change", "on_hand", "reserved", "available"),
    [
        (StockChange.hold(2), 0, 2, -2),
        (StockChange.unhold(2), 0, -2, 2),
        (StockChange.sale(2), -2, -2, 0),
        (StockChange.give_back(2), 2, 0, 2),
    ],
)
def test_stock_movements_keep_available_equal_to_on_hand_minus_reserved(
    change: StockChange, on_hand: int, reserved: int, available: int
) -> None:
    assert (change.on_hand, change.reserved, change.available) == (on_hand, reserved, available)


def test_adjustment_never_below_reserved_nor_above_the_limit() -> None:
    assert adjusted(_product(), -7, LATER).stock_on_hand == 3
    with pytest.raises(StockUnavailable):
        adjusted(_product(), -8, LATER)
    with pytest.raises(StockLimitExceeded):
        adjusted(_product(), 2**31, LATER)


def test_hold_refusals() -> None:
    mine = Hold("o", 2, "a1", NOW)
    assert hold_refusal(None, None, "a1", 1) == HoldResult.refused(ShortageKind.NOT_FOUND)
    assert hold_refusal(_product(), mine, "a1", 2).outcome is HoldOutcome.ALREADY  # type: ignore[union-attr]
    conflict = hold_refusal(_product(), mine, "a2", 2)
    assert conflict is not None
    assert (conflict.outcome, conflict.other) == (HoldOutcome.CONFLICT, mine)
    archived_product = _product(state=ProductState.ARCHIVED)
    assert hold_refusal(archived_product, None, "a1", 1) == HoldResult.refused(
        ShortageKind.ARCHIVED
    )
    assert hold_refusal(_product(), None, "a1", 8) == HoldResult.refused(ShortageKind.OUT_OF_STOCK)
    assert hold_refusal(_product(), None, "a1", 7) is None  # stock changed meanwhile: retry


def test_product_writes_bump_the_etag() -> None:
    product = _product()
    with pytest.raises(EtagMismatch):
        check_etag(product, 'W/"1"')
    check_etag(product, "")
    renamed = changed(product, ProductChanges(fields=frozenset({"name"}), name="Cup"), LATER)
    assert (renamed.name, renamed.etag, renamed.update_time) == ("Cup", 'W/"3"', LATER)
    gone = archived(product, LATER)
    assert (gone.state, gone.archive_time, gone.etag) == (ProductState.ARCHIVED, LATER, 'W/"3"')
    with pytest.raises(ProductArchived):
        changed(gone, ProductChanges(fields=frozenset({"name"}), name="Cup"), LATER)


def test_saga_steps() -> None:
    saga = begin("o", [Line("SKU-1", 1)], NOW, timedelta(minutes=15))
    assert (saga.phase, saga.expire_time) == (Phase.RESERVING, NOW + timedelta(minutes=15))
    expiring = start_expiry(saga, LATER)
    assert expiring.from_phases == (Phase.RESERVING, Phase.HELD)
    assert (expiring.after.phase, expiring.after.cause) == (Phase.EXPIRING, ReleaseCause.EXPIRED)
    # Settling: the deadline goes; after returning sold units their markers are kept a while.
    committed_then_released = start_release(
        replace(saga, phase=Phase.COMMITTED), "cancelled", LATER
    ).after
    assert committed_then_released.was_committed
    assert committed_then_released.returns_sold_units
    settled = settle(committed_then_released, LATER, timedelta(hours=1)).after
    assert (settled.phase, settled.expire_time) == (Phase.RELEASED, None)
    assert settled.cleanup_after == LATER + timedelta(hours=1)
    # A failed attempt holds nothing: a release closes it, a reservation retries it.
    failed = settle(replace(saga, phase=Phase.FAILING), NOW, timedelta(0)).after
    closed = start_release(failed, "", LATER).after
    assert (closed.phase, closed.lines) == (Phase.RELEASED, ())
    again = retry(failed, [Line("SKU-1", 2)], LATER, timedelta(minutes=15)).after
    assert again.phase is Phase.RESERVING
    assert again.attempt != saga.attempt
    assert released_unreserved("o", "early", NOW).phase.closed
    with pytest.raises(ValueError, match="colour"):
        Move(saga, (Phase.HELD,), NOW, {"colour": "red"})


def test_only_the_live_saga_of_the_same_attempt_owns_a_hold() -> None:
    saga = begin("o", [Line("SKU-1", 1)], NOW, timedelta(minutes=15))
    hold = Hold("o", 1, saga.attempt, NOW)
    assert owns(saga, hold)
    assert not owns(None, hold)
    assert not owns(saga, Hold("o", 1, "older-attempt", NOW))
    assert not owns(start_expiry(saga, NOW).after, hold)
    assert hold.older_than(LATER)
    assert not hold.older_than(NOW - timedelta(seconds=1))
    assert not Hold("o", 1, "a", None).older_than(LATER)
