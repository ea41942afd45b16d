"""Stock reservations against the real stack, through the gRPC server."""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from mercato.catalog.v1 import catalog_pb2
from mercato_catalog.domain.reservations import Line, Phase, begin, held_first, minute_bucket
from mercato_catalog.store import ReservationStore, StockStore, utcnow
from mercato_catalog.store.reservations import MINUTES_LISTED_BY_EQUALITY
from mercato_common.rpc_errors import error_from_rpc

pytestmark = pytest.mark.integration


def _details(error: grpc.aio.AioRpcError) -> tuple[str, list[tuple[str, str]]]:
    """The ErrorInfo reason and the PreconditionFailure violations (type, subject)."""
    reason = error_from_rpc(error).reason
    violations: list[tuple[str, str]] = []
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
                    failure = error_details_pb2.PreconditionFailure()
                    detail.Unpack(failure)
                    violations.extend((v.type, v.subject) for v in failure.violations)
    return reason, violations


async def test_50_concurrent_reservations_against_stock_10(catalog) -> None:
    await catalog.create_product("HOT-1", stock=10)

    async def one() -> grpc.aio.AioRpcError | None:
        try:
            await catalog.reserve(str(uuid.uuid4()), ("HOT-1", 1))
        except grpc.aio.AioRpcError as error:
            return error
        return None

    results = await asyncio.gather(*(one() for _ in range(50)))
    refused = [error for error in results if error is not None]
    assert len(results) - len(refused) == 10
    for error in refused:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _details(error) == ("STOCK_UNAVAILABLE", [("OUT_OF_STOCK", "HOT-1")])
    product = await catalog.get("HOT-1")
    assert (product.stock_on_hand, product.stock_reserved, product.stock_available) == (10, 10, 0)


async def test_retried_reservation_changes_nothing(catalog) -> None:
    await catalog.create_product("RETRY-1", stock=5)
    await catalog.create_product("RETRY-2", stock=5)
    order = str(uuid.uuid4())
    lines = (("RETRY-1", 2), ("RETRY-2", 1))
    first = await catalog.reserve(order, *lines)
    assert first.state == catalog_pb2.RESERVATION_STATE_HELD
    # Sequential and concurrent retries, lines in another order: the same reservation.
    again = await asyncio.gather(*(catalog.reserve(order, *reversed(lines)) for _ in range(5)))
    assert {r.create_time.ToNanoseconds() for r in again} == {first.create_time.ToNanoseconds()}
    assert (await catalog.get("RETRY-1")).stock_available == 3
    assert (await catalog.get("RETRY-2")).stock_available == 4
    # Same order, other lines: refused, nothing more reserved.
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.reserve(order, ("RETRY-1", 3))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert _details(caught.value)[0] == "RESERVATION_MISMATCH"
    assert (await catalog.get("RETRY-1")).stock_available == 3


async def test_reservation_answers_its_products_as_held(catalog) -> None:
    """ReserveStock answers the lines' products (prices, names, stock) as its holds wrote them,
    so that orders prices the order without a second read; a replay reads them again."""
    await catalog.create_product("PRICED-1", stock=5, price=1250, name="Kettle")
    await catalog.create_product("PRICED-2", stock=4, price=399)
    request = catalog_pb2.ReserveStockRequest(
        order_id=str(uuid.uuid4()),
        lines=[
            catalog_pb2.ReservationLine(sku="PRICED-1", quantity=2),
            catalog_pb2.ReservationLine(sku="PRICED-2", quantity=1),
        ],
    )
    first = await catalog.stub.ReserveStock(request, metadata=catalog.service)
    assert first.reservation.state == catalog_pb2.RESERVATION_STATE_HELD
    by_sku = {product.sku: product for product in first.products}
    assert [p.sku for p in first.products] == [line.sku for line in first.reservation.lines]
    assert (by_sku["PRICED-1"].name, by_sku["PRICED-1"].price.amount_minor) == ("Kettle", 1250)
    assert by_sku["PRICED-2"].price.amount_minor == 399
    assert (by_sku["PRICED-1"].stock_available, by_sku["PRICED-1"].stock_reserved) == (3, 2)

    # A new order's saga is written once, after its holds: inserted HELD (its event with it,
    # which the relay may have taken already).
    saga = await catalog.app.ctx.reservations.find_one({"_id": request.order_id})
    assert (saga["phase"], saga["version"], saga["was_held"]) == ("HELD", 1, True)

    replay = await catalog.stub.ReserveStock(request, metadata=catalog.service)
    assert replay.reservation.create_time == first.reservation.create_time
    assert list(replay.products) == list(first.products)  # read again, nothing moved since


async def test_third_line_out_of_stock_leaves_the_others_untouched(catalog) -> None:
    await catalog.create_product("LINE-A", stock=5)
    await catalog.create_product("LINE-B", stock=5)
    await catalog.create_product("LINE-C", stock=1)
    order = str(uuid.uuid4())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.reserve(order, ("LINE-A", 2), ("LINE-B", 3), ("LINE-C", 2), ("NOPE-1", 1))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    reason, violations = _details(caught.value)
    assert reason == "STOCK_UNAVAILABLE"
    assert violations == [("OUT_OF_STOCK", "LINE-C"), ("NOT_FOUND", "NOPE-1")]
    for sku, available in (("LINE-A", 5), ("LINE-B", 5), ("LINE-C", 1)):
        product = await catalog.get(sku)
        assert (product.stock_available, product.stock_reserved) == (available, 0)
    doc = await catalog.app.ctx.products.find_one({"_id": "LINE-A"})
    assert doc["holds"] == {}
    # Stored once, FAILED with the shortages, after the holds went back.
    saga = await catalog.app.ctx.reservations.find_one({"_id": order})
    assert (saga["phase"], saga["version"], len(saga["shortages"])) == ("FAILED", 1, 2)
    # The order is not reserved; once stock arrives a retry succeeds as a new attempt.
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await catalog.stub.GetReservation(
            catalog_pb2.GetReservationRequest(order_id=order), metadata=catalog.service
        )
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    await catalog.stub.AdjustStock(
        catalog_pb2.AdjustStockRequest(sku="LINE-C", delta=1, reason="found one"),
        metadata=catalog.admin,
    )
    held = await catalog.reserve(order, ("LINE-A", 2), ("LINE-B", 3), ("LINE-C", 2))
    assert held.state == catalog_pb2.RESERVATION_STATE_HELD
    assert (await catalog.get("LINE-C")).stock_available == 0


async def test_expired_reservations_return_their_stock(make_catalog) -> None:
    catalog = await make_catalog(reservation_ttl_seconds=1.0)
    await catalog.create_product("EXP-1", stock=3)
    order = str(uuid.uuid4())
    held = await catalog.reserve(order, ("EXP-1", 2))
    assert held.HasField("expire_time")
    assert (await catalog.get("EXP-1")).stock_available == 1
    deadline = time.monotonic() + 15
    while True:
        reservation = (
            await catalog.stub.GetReservation(
                catalog_pb2.GetReservationRequest(order_id=order), metadata=catalog.service
            )
        ).reservation
        if reservation.state == catalog_pb2.RESERVATION_STATE_EXPIRED:
            break
        assert time.monotonic() < deadline, "the sweeper did not expire the reservation"
        await asyncio.sleep(0.2)
    product = await catalog.get("EXP-1")
    assert (product.stock_on_hand, product.stock_reserved, product.stock_available) == (3, 0, 3)
    # Expired: it cannot be committed, and a retried reservation reserves nothing.
    for call in (
        catalog.stub.CommitReservation(
            catalog_pb2.CommitReservationRequest(order_id=order), metadata=catalog.service
        ),
        catalog.reserve(order, ("EXP-1", 2)),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call
        assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert _details(caught.value)[0] == "RESERVATION_CLOSED"
    assert (await catalog.get("EXP-1")).stock_available == 3


async def test_commit_then_release_and_release_before_reserve(catalog) -> None:
    await catalog.create_product("FLOW-1", stock=10)
    order = str(uuid.uuid4())
    await catalog.reserve(order, ("FLOW-1", 4))
    commit = catalog_pb2.CommitReservationRequest(order_id=order)
    committed = await catalog.stub.CommitReservation(commit, metadata=catalog.service)
    assert committed.reservation.state == catalog_pb2.RESERVATION_STATE_COMMITTED
    again = await catalog.stub.CommitReservation(commit, metadata=catalog.service)
    assert again.reservation.state == catalog_pb2.RESERVATION_STATE_COMMITTED
    product = await catalog.get("FLOW-1")
    assert (product.stock_on_hand, product.stock_reserved, product.stock_available) == (6, 0, 6)
    # A late retry of the reservation returns the committed one.
    assert (await catalog.reserve(order, ("FLOW-1", 4))).state == (
        catalog_pb2.RESERVATION_STATE_COMMITTED
    )
    # Cancelled after payment: the units return to stock, once.
    release = catalog_pb2.ReleaseStockRequest(order_id=order, reason="order cancelled")
    for _ in range(2):
        released = await catalog.stub.ReleaseStock(release, metadata=catalog.service)
        assert released.reservation.state == catalog_pb2.RESERVATION_STATE_RELEASED
    product = await catalog.get("FLOW-1")
    assert (product.stock_on_hand, product.stock_available) == (10, 10)
    # A release that arrives before its reservation closes the order.
    early = str(uuid.uuid4())
    await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=early), metadata=catalog.service
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.reserve(early, ("FLOW-1", 1))
    assert _details(caught.value)[0] == "RESERVATION_CLOSED"
    assert (await catalog.get("FLOW-1")).stock_available == 10
    # Held then released: available again.
    held = str(uuid.uuid4())
    await catalog.reserve(held, ("FLOW-1", 3))
    await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=held), metadata=catalog.service
    )
    assert (await catalog.get("FLOW-1")).stock_available == 10
    listed = await catalog.stub.ListReservations(
        catalog_pb2.ListReservationsRequest(state=catalog_pb2.RESERVATION_STATE_RELEASED),
        metadata=catalog.service,
    )
    assert {r.order_id for r in listed.reservations} == {order, early, held}


async def test_adjust_stock_never_below_reserved_and_request_id_once(catalog) -> None:
    await catalog.create_product("ADJ-1", stock=5)
    await catalog.reserve(str(uuid.uuid4()), ("ADJ-1", 4))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await catalog.stub.AdjustStock(
            catalog_pb2.AdjustStockRequest(sku="ADJ-1", delta=-2, reason="count"),
            metadata=catalog.admin,
        )
    assert _details(caught.value)[0] == "STOCK_UNAVAILABLE"
    request = catalog_pb2.AdjustStockRequest(
        sku="ADJ-1", delta=3, reason="delivery 4711", request_id=str(uuid.uuid4())
    )
    for _ in range(3):
        response = await catalog.stub.AdjustStock(request, metadata=catalog.admin)
    assert response.product.stock_on_hand == 8


async def test_sweeper_finishes_abandoned_steps_and_reaps_orphan_holds(make_catalog) -> None:
    # The test sweeps by hand: a background sweep could reap the straggler before it is counted.
    catalog = await make_catalog(
        sweep_interval_seconds=3600, stuck_after_seconds=0.1, orphan_grace_seconds=0
    )
    app = catalog.app
    await catalog.create_product("CRASH-1", stock=10)
    # A caller died half-way through a commit: the saga says COMMITTING, the hold is still there.
    order = str(uuid.uuid4())
    await catalog.reserve(order, ("CRASH-1", 3))
    await app.ctx.reservations.update_one({"_id": order}, {"$set": {"phase": "COMMITTING"}})
    # A straggler held units for an order whose saga never got them (or moved on).
    ghost = str(uuid.uuid4())
    await app.stock.hold("CRASH-1", ghost, 2, "dead-attempt")
    assert (await catalog.get("CRASH-1")).stock_reserved == 5
    await asyncio.sleep(0.2)
    await app.sweeper.sweep_once()
    reservation = (
        await catalog.stub.GetReservation(
            catalog_pb2.GetReservationRequest(order_id=order), metadata=catalog.service
        )
    ).reservation
    assert reservation.state == catalog_pb2.RESERVATION_STATE_COMMITTED
    # Orphan reaping runs every few sweeps; run it now. The legitimate hold was committed.
    await app.upkeep.reap_orphan_holds(utcnow(), 100)
    assert await app.upkeep.reap_orphan_holds(utcnow(), 100) == 0
    product = await catalog.get("CRASH-1")
    assert (product.stock_on_hand, product.stock_reserved, product.stock_available) == (7, 0, 7)
    # The ghost had no saga (a first attempt whose caller died between its holds and its
    # insert): its attempt was stored FAILED before the hold went back, so the caller, were it
    # only late, cannot store a saga that claims it; the order can still be reserved afresh.
    sagas = ReservationStore(app.ctx)
    abandoned = await sagas.find(ghost)
    assert abandoned is not None
    assert (abandoned.phase, abandoned.attempt, abandoned.lines) == (
        Phase.FAILED,
        "dead-attempt",
        (),
    )
    late = held_first(begin(ghost, [Line("CRASH-1", 2)], utcnow(), timedelta(minutes=5)), utcnow())
    assert not await sagas.insert(replace(late, attempt="dead-attempt"))
    await catalog.reserve(ghost, ("CRASH-1", 2))
    assert (await catalog.get("CRASH-1")).stock_reserved == 2


async def test_the_reaper_reads_the_products_marked_holding_and_unmarks_those_holding_nothing(
    make_catalog,
) -> None:
    """A hold marks its product ``holding`` (what the reaper reads, by equality); the reaper
    unmarks a product left holding nothing; a product holding units stored before the mark
    existed is marked at start."""
    catalog = await make_catalog(sweep_interval_seconds=3600, orphan_grace_seconds=0)
    app = catalog.app
    stock = StockStore(app.ctx)
    for sku in ("MARK-1", "MARK-2", "MARK-3"):
        await catalog.create_product(sku, stock=10)
    order = str(uuid.uuid4())
    await catalog.reserve(order, ("MARK-1", 2))

    async def marked() -> list[str]:
        docs = app.ctx.products.find({"holding": True}, projection={"_id": 1})
        return sorted([doc["_id"] async for doc in docs])

    assert await marked() == ["MARK-1"]
    assert [sku for sku, _ in await stock.holds_page("", 100)] == ["MARK-1"]
    await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=order, reason="cancelled"),
        metadata=catalog.service,
    )
    assert await stock.holds_page("", 100) == [("MARK-1", [])]
    assert await app.upkeep.reap_orphan_holds(utcnow(), 100) == 0
    assert await marked() == []

    # A hold stored by an earlier catalog, without the mark: marked once, then read.
    legacy = str(uuid.uuid4())
    await catalog.reserve(legacy, ("MARK-2", 1))
    await app.ctx.products.update_one({"_id": "MARK-2"}, {"$unset": {"holding": ""}})
    assert await stock.mark_holding() == 1
    assert await stock.mark_holding() == 0
    assert await marked() == ["MARK-2"]
    # The mark stays while the product holds units: the reaper keeps the owned hold and it.
    assert await app.upkeep.reap_orphan_holds(utcnow(), 100) == 0
    assert await marked() == ["MARK-2"]
    assert not await stock.forget_holding("MARK-2")


async def test_a_hold_is_one_string_and_holds_of_the_earlier_form_are_still_given_back(
    make_catalog,
) -> None:
    """A hold is stored as one string; a product still carrying holds written as sub-documents
    by an earlier version (``{o, q, a, t}``) has them released, sold and reaped all the same."""
    # The test reaps by hand: a background sweep could reap the orphan before it is counted.
    catalog = await make_catalog(sweep_interval_seconds=3600, orphan_grace_seconds=0)
    app = catalog.app
    await catalog.create_product("FORM-1", stock=10)
    order = str(uuid.uuid4())
    await catalog.reserve(order, ("FORM-1", 2))
    doc = await app.ctx.products.find_one({"_id": "FORM-1"})
    assert doc is not None
    [stored] = doc["holds"].values()
    attempt = (await app.ctx.reservations.find_one({"_id": order}))["attempt"]
    assert isinstance(stored, str)
    assert stored.startswith(f"{attempt}:2:")
    assert stored.endswith(f":{order}")

    # Two holds as an earlier version wrote them: one its saga owns (HELD), one orphan.
    legacy, orphan = str(uuid.uuid4()), str(uuid.uuid4())
    await catalog.reserve(legacy, ("FORM-1", 3))
    legacy_attempt = (await app.ctx.reservations.find_one({"_id": legacy}))["attempt"]
    old = utcnow() - timedelta(minutes=5)
    await app.ctx.products.update_one(
        {"_id": "FORM-1"},
        {
            "$set": {
                f"holds.o_{legacy.replace('-', '')}": {
                    "o": legacy, "q": 3, "a": legacy_attempt, "t": old
                },
                f"holds.o_{orphan.replace('-', '')}": {"o": orphan, "q": 1, "a": "gone", "t": old},
            },
            "$inc": {"stock_reserved": 1, "stock_available": -1},
        },
    )  # fmt: skip
    # Read from the store: written past the service, the product may still be cached as it was.
    doc = await app.ctx.products.find_one({"_id": "FORM-1"})
    assert doc is not None
    assert doc["stock_reserved"] == 6
    assert await app.upkeep.reap_orphan_holds(utcnow(), 100) == 1  # the orphan, not the others
    await catalog.stub.CommitReservation(
        catalog_pb2.CommitReservationRequest(order_id=legacy), metadata=catalog.service
    )
    await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=order, reason="cancelled"),
        metadata=catalog.service,
    )
    product = await catalog.get("FORM-1")
    assert (product.stock_on_hand, product.stock_reserved, product.stock_available) == (7, 0, 7)
    doc = await app.ctx.products.find_one({"_id": "FORM-1"})
    assert doc is not None
    assert doc["holds"] == {}


async def test_sweeper_drops_the_return_markers_of_a_released_sale(make_catalog) -> None:
    catalog = await make_catalog(return_marker_retention_seconds=0.1)
    app = catalog.app
    await catalog.create_product("BACK-1", stock=10)
    order = str(uuid.uuid4())
    await catalog.reserve(order, ("BACK-1", 4))
    await catalog.stub.CommitReservation(
        catalog_pb2.CommitReservationRequest(order_id=order), metadata=catalog.service
    )
    released = await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=order, reason="cancelled"),
        metadata=catalog.service,
    )
    assert released.reservation.state == catalog_pb2.RESERVATION_STATE_RELEASED
    product = await app.ctx.products.find_one({"_id": "BACK-1"})
    assert product is not None
    assert product["returns"]  # the sold units came back once, guarded by the order's marker
    saga = await app.ctx.reservations.find_one({"_id": order})
    assert saga is not None
    assert saga["cleanup"] is True
    await asyncio.sleep(0.2)
    await app.sweeper.sweep_once()
    product = await app.ctx.products.find_one({"_id": "BACK-1"})
    assert product is not None
    assert product["returns"] == {}
    saga = await app.ctx.reservations.find_one({"_id": order})
    assert saga is not None
    assert "cleanup" not in saga
    assert "cleanup_after" not in saga
    assert (await catalog.get("BACK-1")).stock_on_hand == 10


async def test_a_clean_up_is_found_by_the_minute_it_falls_due_in(make_catalog) -> None:
    # The test sweeps by hand: a background sweep could clean up before the reads.
    catalog = await make_catalog(sweep_interval_seconds=3600, return_marker_retention_seconds=0.1)
    app = catalog.app
    sagas = ReservationStore(app.ctx)
    await catalog.create_product("BACK-2", stock=10)
    order = str(uuid.uuid4())
    await catalog.reserve(order, ("BACK-2", 1))
    await catalog.stub.CommitReservation(
        catalog_pb2.CommitReservationRequest(order_id=order), metadata=catalog.service
    )
    await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=order, reason="cancelled"),
        metadata=catalog.service,
    )
    saga = await sagas.find(order)
    assert saga is not None
    assert saga.cleanup_after is not None
    minute = minute_bucket(saga.cleanup_after)
    later = utcnow() + timedelta(seconds=1)
    assert await sagas.due_for_cleanup(later, 10, minutes=[minute - 1]) == []
    assert [s.order_id for s in await sagas.due_for_cleanup(later, 10, minutes=[minute])] == [order]
    await sagas.clear_cleanup(order)
    assert await sagas.due_for_cleanup(later, 10, minutes=[minute]) == []
    doc = await app.ctx.reservations.find_one({"_id": order})
    assert doc is not None
    assert not {"cleanup", "cleanup_after", "cleanup_minute"} & doc.keys()


async def test_clean_ups_stored_before_the_flag_are_flagged_at_start(make_catalog) -> None:
    catalog = await make_catalog()
    sagas = ReservationStore(catalog.app.ctx)
    order, now = str(uuid.uuid4()), utcnow()
    # A released saga as an older catalog stored it: a clean-up time, no flag.
    await catalog.app.ctx.reservations.insert_one(
        {
            "_id": order,
            "phase": "RELEASED",
            "create_time": now,
            "update_time": now,
            "cleanup_after": now,
            "lines": [],
        }
    )
    assert [saga.order_id for saga in await sagas.due_for_cleanup(utcnow(), 10)] == []
    assert await sagas.mark_pending_cleanups() == 1
    assert await sagas.mark_pending_cleanups() == 0
    assert [saga.order_id for saga in await sagas.due_for_cleanup(utcnow(), 10)] == [order]


async def test_listing_pages_through_every_phase_in_creation_order(catalog) -> None:
    await catalog.create_product("PAGE-1", stock=100)
    orders = [str(uuid.uuid4()) for _ in range(5)]
    for order in orders:
        await catalog.reserve(order, ("PAGE-1", 1))
        await asyncio.sleep(0.005)  # distinct creation times (milliseconds)
    for order in orders[1::2]:  # two of them move on to COMMITTED, a phase of its own
        await catalog.stub.CommitReservation(
            catalog_pb2.CommitReservationRequest(order_id=order), metadata=catalog.service
        )

    async def walk(state: int) -> list[str]:
        seen: list[str] = []
        token = ""
        for _ in range(10):
            page = await catalog.stub.ListReservations(
                catalog_pb2.ListReservationsRequest(page_size=2, page_token=token, state=state),
                metadata=catalog.service,
            )
            seen.extend(r.order_id for r in page.reservations if r.order_id in orders)
            token = page.next_page_token
            if not token:
                return seen
        raise AssertionError("more pages than reservations")

    assert await walk(catalog_pb2.RESERVATION_STATE_UNSPECIFIED) == orders
    assert await walk(catalog_pb2.RESERVATION_STATE_HELD) == orders[0::2]
    assert await walk(catalog_pb2.RESERVATION_STATE_COMMITTED) == orders[1::2]


async def test_the_sweeper_reads_due_sagas_by_expiry_minute(make_catalog) -> None:
    """Held sagas are found by the minute their deadline falls in (an equality), so a sweep
    does not read every held saga; the full scan still finds sagas without that field."""
    ttl = 900.0
    # This test sweeps by hand.
    catalog = await make_catalog(sweep_interval_seconds=3600, reservation_ttl_seconds=ttl)
    sagas = ReservationStore(catalog.app.ctx)
    now = utcnow()
    await catalog.create_product("MIN-1", stock=10)
    bucketed = str(uuid.uuid4())
    await catalog.reserve(bucketed, ("MIN-1", 1))
    stored = await catalog.app.ctx.reservations.find_one({"_id": bucketed})
    assert stored is not None
    assert stored["expire_minute"] == minute_bucket(stored["expire_time"].replace(tzinfo=UTC))
    # A held saga as an older catalog stored it: a past deadline, no expire_minute.
    legacy = str(uuid.uuid4())
    past = now - timedelta(minutes=5)
    await catalog.app.ctx.reservations.insert_one(
        {"_id": legacy, "phase": "HELD", "attempt": "a", "create_time": past,
         "update_time": past, "expire_time": past, "lines": []}
    )  # fmt: skip
    later = now + timedelta(seconds=ttl + 1)
    window = range(minute_bucket(now), minute_bucket(later) + 1)
    found = await sagas.due_for_expiry(later, 100, minutes=window)
    assert bucketed in {saga.order_id for saga in found}
    assert legacy not in {saga.order_id for saga in found}
    outside = await sagas.due_for_expiry(later, 100, minutes=[minute_bucket(later) + 5])
    assert bucketed not in {saga.order_id for saga in outside}
    scanned = {saga.order_id for saga in await sagas.due_for_expiry(later, 100)}
    assert {bucketed, legacy} <= scanned
    # A move that ends the deadline clears the minute: a released saga is never due again.
    await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=bucketed, reason="test"),
        metadata=catalog.service,
    )
    released = await catalog.app.ctx.reservations.find_one({"_id": bucketed})
    assert released is not None
    assert released["expire_minute"] is None
    again = await sagas.due_for_expiry(later, 100, minutes=window)
    assert bucketed not in {saga.order_id for saga in again}


async def test_a_short_creation_range_is_listed_by_creation_minute(catalog) -> None:
    """Both creation bounds a few minutes apart: the reservations are read by the minute they
    were created in (an equality), so a saga without ``create_minute`` is missed until the
    start-up back-fill gives it one; a wide range reads every saga of the phase."""
    await catalog.create_product("CMIN-1", stock=10)
    started = utcnow()
    early, late = str(uuid.uuid4()), str(uuid.uuid4())
    await catalog.reserve(early, ("CMIN-1", 1))
    await asyncio.sleep(0.005)  # distinct creation times (milliseconds)
    await catalog.reserve(late, ("CMIN-1", 1))
    stored = await catalog.app.ctx.reservations.find_one({"_id": early})
    assert stored is not None
    assert stored["create_minute"] == minute_bucket(stored["create_time"].replace(tzinfo=UTC))
    # A held saga as an older catalog stored it: no create_minute.
    legacy = str(uuid.uuid4())
    now = utcnow()
    await catalog.app.ctx.reservations.insert_one(
        {"_id": legacy, "phase": "HELD", "attempt": "a", "create_time": now,
         "update_time": now, "expire_time": now + timedelta(minutes=15), "lines": []}
    )  # fmt: skip
    ours = {early, late, legacy}

    async def listed(after: datetime, before: datetime) -> list[str]:
        request = catalog_pb2.ListReservationsRequest(
            page_size=2, state=catalog_pb2.RESERVATION_STATE_HELD
        )
        request.created_after.FromDatetime(after)
        request.created_before.FromDatetime(before)
        seen: list[str] = []
        for _ in range(500):  # other tests' reservations share the minutes
            page = await catalog.stub.ListReservations(request, metadata=catalog.service)
            seen.extend(r.order_id for r in page.reservations if r.order_id in ours)
            request.page_token = page.next_page_token
            if not request.page_token:
                return seen
        raise AssertionError("more pages than reservations")

    soon = utcnow() + timedelta(seconds=1)
    wide = started - timedelta(minutes=MINUTES_LISTED_BY_EQUALITY + 1)
    assert await listed(started, soon) == [early, late]
    assert await listed(wide, soon) == [early, late, legacy]
    created = stored["create_time"].replace(tzinfo=UTC)
    assert await listed(created, soon) == [early, late]  # after: inclusive
    # 1 ms past early's creation leaves early out (late was created at least 5 ms after it)
    assert await listed(created + timedelta(milliseconds=1), soon) == [late]
    assert await listed(started, created) == []  # before: exclusive

    sagas = ReservationStore(catalog.app.ctx)
    assert await sagas.add_create_minutes() == 1
    assert await sagas.add_create_minutes() == 0
    assert await listed(started, soon) == [early, late, legacy]

    # An empty or inverted range is refused, naming the rule.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await listed(soon, started)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    violations = error_from_rpc(refused.value).field_violations
    assert [v.description for v in violations] == ["created_after must be before created_before"]
