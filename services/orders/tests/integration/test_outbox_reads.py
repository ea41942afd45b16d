"""The outbox relay killed mid-batch; ownership, listing and payment rules through the API."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from mercato.orders.v1 import orders_pb2
from mercato_common.kafka import EventProducer, decode_envelope
from mercato_common.outbox import PostgresOutboxRelay

pytestmark = pytest.mark.integration


class KillingProducer(EventProducer):
    """Kills the relay (cancels its task) once Kafka acknowledged the n-th record: mid-batch,
    after records went out and before the batch is marked sent."""

    def __init__(self, bootstrap: str, kill_at: int) -> None:
        super().__init__(bootstrap)
        self.kill_at = kill_at
        self.sent = 0
        self.task: asyncio.Task[Any] | None = None

    async def send_traced(self, *args: Any, **kwargs: Any) -> Any:
        self.sent += 1
        delivery = await super().send_traced(*args, **kwargs)
        if self.sent == self.kill_at and self.task is not None:
            task = self.task
            # The relay is then waiting for the batch's acknowledgements (asyncio.wait).
            delivery.add_done_callback(lambda _: task.cancel())
        return delivery


async def test_relay_killed_mid_batch_and_restarted_delivers_every_event(
    make_orders, auth, catalog, kafka_bootstrap
):
    orders = await make_orders(events=True, outbox_relay_enabled=False)
    await catalog.product("EVT-1", stock=100)
    ann = await auth.customer()
    placed = [await orders.create(ann, ("EVT-1", 1)) for _ in range(8)]
    for order in placed[:5]:
        await orders.pay(ann.md, order)
    for order in placed[5:7]:
        await orders.cancel(ann.md, order.id)
    rows = await orders.fetch("SELECT id::text AS id FROM outbox ORDER BY seq")
    expected = [r["id"] for r in rows]
    assert len(expected) == 15

    pool = orders.app.database.pool
    killer = KillingProducer(kafka_bootstrap, kill_at=8)  # in the second batch of 5
    relay = PostgresOutboxRelay(
        pool, killer, batch_size=5, poll_interval=0.1, listen=False, registry=CollectorRegistry()
    )
    task = asyncio.create_task(relay.run())
    killer.task = task
    await asyncio.wait({task}, timeout=30)
    assert task.cancelled()
    await killer.stop()
    sent = await orders.fetch("SELECT count(*) AS n FROM outbox WHERE sent_at IS NOT NULL")
    assert sent[0]["n"] == 5  # only the first batch was marked; the killed one rolled back

    producer = EventProducer(kafka_bootstrap)
    restarted = PostgresOutboxRelay(
        pool, producer, batch_size=5, poll_interval=0.1, listen=False, registry=CollectorRegistry()
    )
    task = asyncio.create_task(restarted.run())
    try:
        async with asyncio.timeout(30):
            for _ in iter(int, 1):  # until every row is marked sent
                if not await orders.fetch("SELECT id FROM outbox WHERE sent_at IS NULL"):
                    break
                await asyncio.sleep(0.1)
    finally:
        await restarted.stop(grace=5)
        await asyncio.gather(task, return_exceptions=True)
        await producer.stop()

    records = await orders.consume(
        lambda rs: {decode_envelope(r.value).id for r in rs} >= set(expected),
    )
    ids = [decode_envelope(r.value).id for r in records]
    assert set(ids) == set(expected)  # every event, none invented
    assert len(ids) > len(expected)  # the killed batch's sent records came again (duplicates)
    # Per order, the first copies of its events are in the order of its changes.
    for order in placed:
        names: dict[str, str] = {}
        for record in records:
            envelope = decode_envelope(record.value)
            if envelope.subject == order.id:
                names.setdefault(envelope.id, envelope.type.rsplit(".", 1)[-1])
        assert list(names.values()) in (
            ["OrderPlaced"],
            ["OrderPlaced", "OrderPaid"],
            ["OrderPlaced", "OrderCancelled"],
        )


async def test_another_users_order_is_not_found(orders, auth, catalog):
    await catalog.product("MINE-1", stock=10)
    ann, bob = await auth.customer(), await auth.customer()
    order = await orders.create(ann, ("MINE-1", 1))

    for call in (
        orders.get(bob.md, order.id),
        orders.pay(bob.md, order),
        orders.cancel(bob.md, order.id),
        orders.get(bob.md, "00000000-0000-4000-8000-000000000000"),
    ):
        missing = await orders.fails(call)
        assert (missing.code, missing.reason) == (grpc.StatusCode.NOT_FOUND, "ORDER_NOT_FOUND")
    listed = await orders.stub.ListOrders(orders_pb2.ListOrdersRequest(), metadata=bob.md)
    assert list(listed.orders) == []
    # Nothing changed.
    assert (await orders.get(ann.md, order.id)).state == orders_pb2.ORDER_STATE_CONFIRMED
    # An admin sees and manages anyone's.
    admin = await auth.admin_md()
    assert (await orders.get(admin, order.id)).id == order.id
    # Fulfilment needs orders:fulfill; listing others' needs orders:admin.
    denied = await orders.fails(
        orders.stub.FulfillOrder(orders_pb2.FulfillOrderRequest(id=order.id), metadata=ann.md)
    )
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    denied = await orders.fails(
        orders.stub.ListOrders(orders_pb2.ListOrdersRequest(user_id="-"), metadata=ann.md)
    )
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    unauthenticated = await orders.fails(
        orders.stub.GetOrder(orders_pb2.GetOrderRequest(id=order.id))
    )
    assert unauthenticated.code == grpc.StatusCode.UNAUTHENTICATED


async def test_list_orders_newest_first_with_filters_and_cursor(orders, auth, catalog):
    await catalog.product("LIST-1", stock=100)
    ann, bob = await auth.customer(), await auth.customer()
    mine = [await orders.create(ann, ("LIST-1", 1)) for _ in range(5)]
    theirs = await orders.create(bob, ("LIST-1", 1))
    await orders.pay(ann.md, mine[1])

    pages, token = [], ""
    while True:
        page = await orders.stub.ListOrders(
            orders_pb2.ListOrdersRequest(page_size=2, page_token=token), metadata=ann.md
        )
        pages.append([o.id for o in page.orders])
        token = page.next_page_token
        if not token:
            break
    assert [len(p) for p in pages] == [2, 2, 1]
    assert [i for p in pages for i in p] == [o.id for o in reversed(mine)]

    paid = await orders.stub.ListOrders(
        orders_pb2.ListOrdersRequest(state=orders_pb2.ORDER_STATE_PAID), metadata=ann.md
    )
    assert [o.id for o in paid.orders] == [mine[1].id]
    assert len(paid.orders[0].history) == 3

    # A token is bound to its filters.
    first = await orders.stub.ListOrders(orders_pb2.ListOrdersRequest(page_size=1), metadata=ann.md)
    bad = await orders.fails(
        orders.stub.ListOrders(
            orders_pb2.ListOrdersRequest(
                page_size=1, page_token=first.next_page_token, state=orders_pb2.ORDER_STATE_PAID
            ),
            metadata=ann.md,
        )
    )
    assert (bad.code, bad.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_PAGE_TOKEN")

    admin = await auth.admin_md()
    everyone = await orders.stub.ListOrders(
        orders_pb2.ListOrdersRequest(user_id="-"), metadata=admin
    )
    assert {o.id for o in everyone.orders} == {o.id for o in mine} | {theirs.id}
    bobs = await orders.stub.ListOrders(
        orders_pb2.ListOrdersRequest(user_id=bob.user_id), metadata=admin
    )
    assert [o.id for o in bobs.orders] == [theirs.id]


async def test_payment_checks(orders, auth, catalog):
    await catalog.product("PAY-1", stock=10, price=999)
    ann = await auth.customer()
    order = await orders.create(ann, ("PAY-1", 2))

    wrong = await orders.fails(orders.pay(ann.md, order, amount=1997))
    assert (wrong.code, wrong.reason) == (grpc.StatusCode.FAILED_PRECONDITION, "AMOUNT_MISMATCH")
    assert wrong.metadata["expected_amount_minor"] == "1998"
    declined = await orders.fails(orders.pay(ann.md, order, token="tok_test_declined"))
    assert (declined.code, declined.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "PAYMENT_DECLINED",
    )
    unavailable = await orders.fails(orders.pay(ann.md, order, token="tok_test_unavailable"))
    assert (unavailable.code, unavailable.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "PAYMENT_UNAVAILABLE",
    )
    # Still CONFIRMED, stock still held: pay again.
    assert (await orders.get(ann.md, order.id)).state == orders_pb2.ORDER_STATE_CONFIRMED
    assert await catalog.stock("PAY-1") == (10, 2, 8)
    paid = await orders.pay(ann.md, order)
    assert paid.state == orders_pb2.ORDER_STATE_PAID
    assert [c.id for c in orders.app.payments.charges()] == [paid.payment_id]

    # The catalog down at payment: UNAVAILABLE, the charge is voided, the order stays CONFIRMED.
    other = await orders.create(ann, ("PAY-1", 1))
    await catalog.proxy.cut()
    try:
        down = await orders.fails(orders.pay(ann.md, other))
    finally:
        await catalog.proxy.restore()
    assert (down.code, down.reason) == (grpc.StatusCode.UNAVAILABLE, "CATALOG_UNAVAILABLE")
    assert (await orders.get(ann.md, other.id)).state == orders_pb2.ORDER_STATE_CONFIRMED
    voided = [c for c in orders.app.payments.charges() if c.id != paid.payment_id]
    assert len(voided) == 1
    assert orders.app.payments.refunded(voided[0].id)
    assert (await orders.pay(ann.md, other)).state == orders_pb2.ORDER_STATE_PAID


async def test_concurrent_payments_charge_once(orders, auth, catalog):
    await catalog.product("TWICE-1", stock=10, price=500)
    ann = await auth.customer()
    order = await orders.create(ann, ("TWICE-1", 1))
    results = await asyncio.gather(
        *(orders.pay(ann.md, order) for _ in range(5)), return_exceptions=True
    )
    paid = [r for r in results if isinstance(r, orders_pb2.Order)]
    refused = [orders.failure(r) for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert paid
    assert all(f.metadata.get("current_state") == "ORDER_STATE_PAID" for f in refused)
    assert {p.payment_id for p in paid} == {paid[0].payment_id}
    # One charge (the provider's idempotency key is the order), never refunded.
    assert [c.id for c in orders.app.payments.charges()] == [paid[0].payment_id]
    assert not orders.app.payments.refunded(paid[0].payment_id)
    rows = await orders.fetch("SELECT type FROM outbox ORDER BY seq")
    assert [r["type"].rsplit(".", 1)[-1] for r in rows] == ["OrderPlaced", "OrderPaid"]
    assert await catalog.stock("TWICE-1") == (9, 0, 9)
