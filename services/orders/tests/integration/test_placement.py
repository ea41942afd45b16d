"""CreateOrder: idempotency keys, catalog refusals, catalog outages mid-create, reconciliation."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid

import grpc
import pytest

from mercato.catalog.v1 import catalog_pb2
from mercato.orders.v1 import orders_pb2
from mercato_orders.domain.model import RequestedLine
from mercato_orders.domain.rules import request_fingerprint

pytestmark = pytest.mark.integration


async def test_20_concurrent_creates_with_one_key_make_one_order_and_one_reservation(
    orders, auth, catalog
):
    await catalog.product("RACE-1", stock=100, price=700)
    await catalog.product("RACE-2", stock=100, price=300)
    ann = await auth.customer()
    key = str(uuid.uuid4())

    results = await asyncio.gather(
        *(orders.create(ann, ("RACE-1", 2), ("RACE-2", 1), key=key) for _ in range(20)),
        return_exceptions=True,
    )
    placed = [r for r in results if isinstance(r, orders_pb2.Order)]
    assert len(placed) == 20, [
        orders.failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)
    ]
    assert len({o.id for o in placed}) == 1
    assert all(o.total.amount_minor == 1700 for o in placed)

    assert len(await orders.fetch("SELECT id FROM orders")) == 1
    reservations = await catalog.reservations()
    assert [r.order_id for r in reservations] == [placed[0].id]
    assert await catalog.stock("RACE-1") == (100, 2, 98)
    assert len(await orders.fetch("SELECT id FROM outbox")) == 1  # one OrderPlaced

    # Later retries (e.g. after a lost response) get the same order, nothing new reserved.
    again = await orders.create(ann, ("RACE-2", 1), ("RACE-1", 2), key=key)  # same lines
    assert again.id == placed[0].id
    assert await catalog.stock("RACE-1") == (100, 2, 98)


async def test_key_reused_with_another_body_is_refused_and_keys_are_per_user(orders, auth, catalog):
    await catalog.product("KEY-1", stock=10)
    await catalog.product("KEY-2", stock=10)
    ann, bob = await auth.customer(), await auth.customer()
    key = "checkout-42"
    first = await orders.create(ann, ("KEY-1", 1), key=key)

    for lines in ((("KEY-1", 2),), (("KEY-2", 1),), (("KEY-1", 1), ("KEY-2", 1))):
        refused = await orders.fails(orders.create(ann, *lines, key=key))
        assert (refused.code, refused.reason) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "IDEMPOTENCY_KEY_REUSED",
        )
    assert await catalog.stock("KEY-1") == (10, 1, 9)
    assert await catalog.stock("KEY-2") == (10, 0, 10)

    # The same key of another user is another key.
    bobs = await orders.create(bob, ("KEY-1", 1), key=key)
    assert bobs.id != first.id
    rows = await orders.fetch("SELECT user_id, state FROM idempotency_keys ORDER BY user_id")
    assert sorted((r["user_id"], r["state"]) for r in rows) == sorted(
        [(ann.user_id, "DONE"), (bob.user_id, "DONE")]
    )
    expire = await orders.fetch(
        "SELECT expire_time - create_time >= interval '24 hours' AS kept FROM idempotency_keys"
    )
    assert all(r["kept"] for r in expire)


async def test_catalog_refusal_names_the_lines_and_reserves_nothing(orders, auth, catalog):
    await catalog.product("FEW-1", stock=1)
    await catalog.product("OLD-1", stock=5)
    await catalog.product("FINE-1", stock=5)
    await catalog.product("USD-1", stock=5, currency="USD")
    await catalog.stub.ArchiveProduct(
        catalog_pb2.ArchiveProductRequest(sku="OLD-1"), metadata=catalog.admin
    )
    ann = await auth.customer()

    refused = await orders.fails(
        orders.create(ann, ("FINE-1", 1), ("FEW-1", 2), ("OLD-1", 1), ("NOPE-1", 1), key="k-1")
    )
    assert (refused.code, refused.reason, refused.domain) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "STOCK_UNAVAILABLE",
        "orders.mercato",
    )
    assert refused.violations == [
        ("OUT_OF_STOCK", "FEW-1"),
        ("ARCHIVED", "OLD-1"),
        ("NOT_FOUND", "NOPE-1"),
    ]
    mixed = await orders.fails(orders.create(ann, ("FINE-1", 1), ("USD-1", 1)))
    assert (mixed.code, mixed.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "MIXED_CURRENCIES")
    # Nothing stays reserved: orders prices at what the reservation answers, so the
    # mixed-currency order was reserved, then released at once.
    assert [r.state for r in await catalog.reservations()] == [
        catalog_pb2.RESERVATION_STATE_RELEASED
    ]
    assert await catalog.stock("FINE-1") == (5, 0, 5)
    assert await orders.fetch("SELECT id FROM orders") == []
    # The refused key was forgotten: the same request succeeds once stock arrived.
    assert await orders.fetch("SELECT key FROM idempotency_keys") == []
    await catalog.stub.AdjustStock(
        catalog_pb2.AdjustStockRequest(sku="FEW-1", delta=5, reason="restock"),
        metadata=catalog.admin,
    )
    ok = await orders.create(ann, ("FINE-1", 1), ("FEW-1", 2), key="k-2")
    assert ok.state == orders_pb2.ORDER_STATE_CONFIRMED

    # Duplicate SKUs are refused (by the contract's validation), never merged.
    dup = await orders.fails(orders.create(ann, ("FINE-1", 1), ("FINE-1", 1)))
    assert dup.code == grpc.StatusCode.INVALID_ARGUMENT


async def test_catalog_unreachable_when_reserving(orders, auth, catalog):
    """The catalog cannot be reached for ReserveStock: no order, nothing held, and the retry
    with the same key (handed to reconciliation, its lease ended) places the order."""
    await catalog.product("DOWN-1", stock=5)
    ann = await auth.customer()
    await orders.create(ann, ("DOWN-1", 1))  # warm: service token cached
    await catalog.proxy.cut()
    try:
        down = await orders.fails(orders.create(ann, ("DOWN-1", 1), key="while-down"))
        assert (down.code, down.reason) == (grpc.StatusCode.UNAVAILABLE, "CATALOG_UNAVAILABLE")
    finally:
        await catalog.proxy.restore()
    assert len(await orders.fetch("SELECT id FROM orders")) == 1
    assert await catalog.stock("DOWN-1") == (5, 1, 4)  # only the first order's unit is held
    # As a client would: retry with the same key until orders reaches the catalog again (its
    # channel reconnects with backoff), at most 20 times over about 10 s.
    reasons = []
    for _ in range(20):
        try:
            again = await orders.create(ann, ("DOWN-1", 1), key="while-down")
            break
        except grpc.aio.AioRpcError as error:
            reasons.append(orders.failure(error).reason)
            await asyncio.sleep(0.5)
    assert set(reasons) <= {"CATALOG_UNAVAILABLE"}, reasons
    assert again.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert len(await orders.fetch("SELECT id FROM orders")) == 2
    assert await catalog.stock("DOWN-1") == (5, 2, 3)


async def test_catalog_stopped_mid_create_leaves_no_order_and_no_reserved_stock(
    orders, auth, catalog
):
    """The catalog reserves, then becomes unreachable before it can answer: the orders service
    sees UNAVAILABLE, cannot release at once (still down), and reconciliation releases the stock
    once the catalog is back."""
    await catalog.product("MID-1", stock=10)
    await catalog.product("MID-2", stock=10)
    ann = await auth.customer()
    await orders.create(ann, ("MID-2", 1))  # warm: service token cached
    store = catalog.app.reservations
    real_reserve = store.reserve

    async def reserve_then_die(order_id, lines):
        reservation = await real_reserve(order_id, lines)
        await catalog.proxy.cut()  # the catalog "stops": the answer never reaches orders
        return reservation

    store.reserve = reserve_then_die
    try:
        down = await orders.fails(orders.create(ann, ("MID-1", 3), key="mid-create"))
    finally:
        del store.reserve
    assert (down.code, down.reason) == (grpc.StatusCode.UNAVAILABLE, "CATALOG_UNAVAILABLE")
    (stuck,) = [r for r in await catalog.reservations() if r.lines[0].sku == "MID-1"]
    assert stuck.state == catalog_pb2.RESERVATION_STATE_HELD  # reserved, answer lost
    assert await catalog.stock("MID-1") == (10, 3, 7)
    rows = await orders.fetch(
        "SELECT order_id::text AS order_id FROM idempotency_keys WHERE key = 'mid-create'"
    )
    assert [r["order_id"] for r in rows] == [stuck.order_id]  # handed to reconciliation

    # Still down: reconciliation retries later.
    reconciler = orders.reconciler()
    report = await reconciler.run_once(full=False)
    assert (report.abandoned_released, report.abandoned_deferred) == (0, 1)

    # Back: the next rounds release it (once the channel has reconnected).
    await catalog.proxy.restore()
    released = 0
    async with asyncio.timeout(20):
        while not released:
            await asyncio.sleep(0.2)
            await orders.fetch("UPDATE idempotency_keys SET lease_until = now()")
            released = (await reconciler.run_once(full=False)).abandoned_released
    assert await catalog.stock("MID-1") == (10, 0, 10)
    reservation = await catalog.reservation(stuck.order_id)
    assert reservation.state == catalog_pb2.RESERVATION_STATE_RELEASED
    assert len(await orders.fetch("SELECT id FROM orders")) == 1  # only the warm-up order
    assert await orders.fetch("SELECT key FROM idempotency_keys WHERE key = 'mid-create'") == []


async def test_catalog_deadline_mid_create_releases_at_once(make_orders, auth, catalog):
    """ReserveStock outlives the orders service's catalog deadline: UNAVAILABLE, and the
    compensation (outside the caller's deadline) releases the stock straight away."""
    orders = await make_orders(catalog_timeout_seconds=0.5)
    await catalog.product("SLOW-1", stock=10)
    ann = await auth.customer()
    await orders.create(ann, ("SLOW-1", 1))  # warm
    store = catalog.app.reservations
    real_reserve = store.reserve

    async def slow_reserve(order_id, lines):
        reservation = await real_reserve(order_id, lines)
        await asyncio.sleep(1.5)
        return reservation

    store.reserve = slow_reserve
    try:
        late = await orders.fails(orders.create(ann, ("SLOW-1", 4)))
    finally:
        del store.reserve
    assert (late.code, late.reason) == (grpc.StatusCode.UNAVAILABLE, "CATALOG_UNAVAILABLE")
    assert await catalog.stock("SLOW-1") == (10, 1, 9)  # the warm-up order's unit only
    released = [
        r for r in await catalog.reservations() if r.state == catalog_pb2.RESERVATION_STATE_RELEASED
    ]
    assert [r.lines[0].quantity for r in released] == [4]
    assert len(await orders.fetch("SELECT id FROM orders")) == 1
    assert await orders.fetch("SELECT key FROM idempotency_keys WHERE state = 'PENDING'") == []


async def test_caller_deadline_mid_create_still_releases(orders, auth, catalog):
    """The caller gives up (its deadline) while the catalog is reserving: nothing stays held."""
    await catalog.product("GONE-1", stock=10)
    ann = await auth.customer()
    await orders.create(ann, ("GONE-1", 1))  # warm
    store = catalog.app.reservations
    real_reserve = store.reserve

    async def slow_reserve(order_id, lines):
        await asyncio.sleep(0.6)
        return await real_reserve(order_id, lines)

    store.reserve = slow_reserve
    try:
        late = await orders.fails(orders.create(ann, ("GONE-1", 2), deadline=0.3))
        assert late.code == grpc.StatusCode.DEADLINE_EXCEEDED
        await asyncio.sleep(1.0)
    finally:
        del store.reserve
    assert await catalog.stock("GONE-1") == (10, 1, 9)
    assert len(await orders.fetch("SELECT id FROM orders")) == 1
    assert await orders.fetch("SELECT key FROM idempotency_keys WHERE state = 'PENDING'") == []


async def test_a_retry_takes_over_a_create_that_died_after_reserving(orders, auth, catalog):
    """A create died between ReserveStock and the commit (simulated: key claimed, stock reserved
    under its order id, nothing committed). Once its lease ran out, a retry with the same key
    reuses that reservation: one order, nothing reserved twice."""
    await catalog.product("CRASH-1", stock=10)
    ann = await auth.customer()
    order_id = str(uuid.uuid4())
    fingerprint = request_fingerprint([RequestedLine("CRASH-1", 2)])
    await orders.fetch(
        "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_id, state, owner, "
        "lease_until) VALUES ($1, 'crashed', $2, $3::uuid, 'PENDING', gen_random_uuid(), "
        "now() + interval '1 hour')",
        ann.user_id,
        fingerprint,
        order_id,
    )
    await catalog.stub.ReserveStock(
        catalog_pb2.ReserveStockRequest(
            order_id=order_id, lines=[catalog_pb2.ReservationLine(sku="CRASH-1", quantity=2)]
        ),
        metadata=catalog.service,
    )
    # While the dead create's lease runs, a retry waits, then is told to come back.
    service = orders.app.service
    service.config = dataclasses.replace(service.config, wait_seconds=0.3)
    busy = await orders.fails(orders.create(ann, ("CRASH-1", 2), key="crashed"))
    assert (busy.code, busy.reason) == (grpc.StatusCode.ABORTED, "IDEMPOTENCY_KEY_IN_USE")

    await orders.fetch("UPDATE idempotency_keys SET lease_until = now() - interval '1 second'")
    taken = await orders.create(ann, ("CRASH-1", 2), key="crashed")
    assert taken.id == order_id
    assert await catalog.stock("CRASH-1") == (10, 2, 8)
    assert [r.order_id for r in await catalog.reservations()] == [order_id]


async def test_reconciler_releases_orphans_and_fails_lapsed_orders(orders, auth, catalog):
    await catalog.product("ORPH-1", stock=10)
    ann = await auth.customer()
    # An orphan: a reservation whose order never committed and whose key is gone.
    orphan = str(uuid.uuid4())
    await catalog.stub.ReserveStock(
        catalog_pb2.ReserveStockRequest(
            order_id=orphan, lines=[catalog_pb2.ReservationLine(sku="ORPH-1", quantity=3)]
        ),
        metadata=catalog.service,
    )
    live = await orders.create(ann, ("ORPH-1", 1))
    # A CONFIRMED order whose reservation lapsed (expired in the catalog).
    lapsed = await orders.create(ann, ("ORPH-1", 2))
    await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=lapsed.id, reason="expired"),
        metadata=catalog.service,
    )
    assert await catalog.stock("ORPH-1") == (10, 4, 6)

    report = await orders.reconciler().run_once(full=True)
    assert (report.orphans_released, report.lapsed_failed) == (1, 1)
    assert await catalog.stock("ORPH-1") == (10, 1, 9)
    assert (await orders.get(ann.md, live.id)).state == orders_pb2.ORDER_STATE_CONFIRMED
    failed = await orders.get(ann.md, lapsed.id)
    assert failed.state == orders_pb2.ORDER_STATE_FAILED
    assert (failed.history[-1].actor, failed.state_reason) == (
        "system",
        "stock reservation expired",
    )
    again = await orders.reconciler().run_once(full=True)
    assert (again.orphans_released, again.lapsed_failed) == (0, 0)


async def test_caps_per_user_on_unpaid_orders_and_units_of_one_product(make_orders, auth, catalog):
    """A user cannot hoard stock with unpaid orders: past MAX_OPEN_ORDERS_PER_USER a create is
    refused (RESOURCE_EXHAUSTED, HTTP 429), past MAX_UNITS_PER_PRODUCT_PER_USER units of one
    product too (FAILED_PRECONDITION naming the SKU, HTTP 409); a refusal reserves nothing and
    forgets its key; paying or cancelling frees the room; another user is not affected."""
    orders = await make_orders(max_open_orders_per_user=3, max_units_per_product_per_user=5)
    await catalog.product("CAP-1", stock=100)
    await catalog.product("CAP-2", stock=100)
    ann, bob = await auth.customer(), await auth.customer()

    placed = [await orders.create(ann, ("CAP-1", 2)), await orders.create(ann, ("CAP-2", 1))]
    too_many_units = await orders.fails(orders.create(ann, ("CAP-2", 1), ("CAP-1", 4), key="u"))
    assert (too_many_units.code, too_many_units.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PRODUCT_LIMIT_EXCEEDED",
    )
    assert too_many_units.violations == [("USER_LIMIT", "CAP-1")]
    placed.append(await orders.create(ann, ("CAP-1", 3)))  # 5 units of CAP-1: at the cap
    assert await catalog.stock("CAP-1") == (100, 5, 95)

    refused = await orders.fails(orders.create(ann, ("CAP-2", 1), key="fourth"))
    assert (refused.code, refused.reason) == (
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "TOO_MANY_OPEN_ORDERS",
    )
    assert await catalog.stock("CAP-2") == (100, 1, 99)  # nothing reserved by the refusals
    keys = await orders.fetch("SELECT key FROM idempotency_keys WHERE key IN ('u', 'fourth')")
    assert keys == []  # forgotten: the same request may be sent again later
    assert (await orders.create(bob, ("CAP-2", 1))).state == orders_pb2.ORDER_STATE_CONFIRMED

    # Paying one and cancelling another frees the room for two more.
    await orders.pay(ann.md, placed[1])
    await orders.cancel(ann.md, placed[0].id, reason="changed my mind")
    fourth = await orders.create(ann, ("CAP-2", 1), key="fourth")
    assert fourth.state == orders_pb2.ORDER_STATE_CONFIRMED
    assert (await orders.create(ann, ("CAP-1", 2))).state == orders_pb2.ORDER_STATE_CONFIRMED
    # A retry of a placed order answers it even at the cap.
    again = await orders.create(ann, ("CAP-2", 1), key="fourth")
    assert again.id == fourth.id


async def test_an_orphan_scan_reads_what_was_created_since_the_previous_one(orders, auth, catalog):
    """A reservation found owned is not read again until the next full scan: an owned one
    that became an orphan behind the reconciler's back (its order cancelled without a
    release owed) waits for it, one created since the previous scan does not."""
    await catalog.product("INCR-1", stock=10)
    ann = await auth.customer()
    reconciler = orders.reconciler(full_orphan_scan_every=2)
    owned = await orders.create(ann, ("INCR-1", 1))
    first = await reconciler.run_once(full=True)  # scan 1: every reservation
    assert first.orphans_released == 0
    await orders.fetch("UPDATE orders SET state = 'CANCELLED' WHERE id = $1", uuid.UUID(owned.id))
    orphan = str(uuid.uuid4())
    await catalog.stub.ReserveStock(
        catalog_pb2.ReserveStockRequest(
            order_id=orphan, lines=[catalog_pb2.ReservationLine(sku="INCR-1", quantity=2)]
        ),
        metadata=catalog.service,
    )
    assert await catalog.stock("INCR-1") == (10, 3, 7)

    second = await reconciler.run_once(full=True)  # scan 2: created since scan 1
    assert second.orphans_released == 1
    assert await catalog.stock("INCR-1") == (10, 1, 9)
    third = await reconciler.run_once(full=True)  # scan 3: every reservation again
    assert third.orphans_released == 1
    assert await catalog.stock("INCR-1") == (10, 0, 10)
