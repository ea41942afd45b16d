"""Place → pay → fulfil and cancel, end to end: real auth, real catalog, PostgreSQL, Kafka."""

from __future__ import annotations

import grpc
import pytest

from mercato.catalog.v1 import catalog_pb2
from mercato.orders.events.v1 import events_pb2
from mercato.orders.v1 import orders_pb2
from mercato_common.kafka import decode_envelope, headers_to_map, unpack_data
from mercato_devstack.testing import unsent_outbox_rows

pytestmark = pytest.mark.integration

S = orders_pb2


async def test_place_pay_fulfil_with_events_in_order(make_orders, auth, catalog):
    orders = await make_orders(events=True)
    await catalog.product("MUG-1", stock=10, price=1250)
    await catalog.product("TEA-1", stock=5, price=399)
    ann = await auth.customer()

    placed = await orders.create(ann, ("MUG-1", 2), ("TEA-1", 3))

    # Prices and totals from the catalog, in minor units.
    assert placed.state == S.ORDER_STATE_CONFIRMED
    assert placed.user_id == ann.user_id
    assert [
        (line.sku, line.quantity, line.unit_price.amount_minor, line.line_total.amount_minor)
        for line in placed.lines
    ] == [("MUG-1", 2, 1250, 2500), ("TEA-1", 3, 399, 1197)]
    assert placed.lines[0].product_name == "Product MUG-1"
    assert (placed.total.currency_code, placed.total.amount_minor) == ("EUR", 3697)
    assert [(h.from_state, h.to_state, h.actor) for h in placed.history] == [
        (S.ORDER_STATE_UNSPECIFIED, S.ORDER_STATE_PENDING, ann.user_id),
        (S.ORDER_STATE_PENDING, S.ORDER_STATE_CONFIRMED, "system"),
    ]
    # Stock is reserved in the catalog under the order id.
    assert await catalog.stock("MUG-1") == (10, 2, 8)
    reservation = await catalog.reservation(placed.id)
    assert reservation.state == catalog_pb2.RESERVATION_STATE_HELD

    paid = await orders.pay(ann.md, placed)
    assert paid.state == S.ORDER_STATE_PAID
    assert paid.payment_id.startswith("pay_dev_")
    # Payment committed the reservation: the units left stock on hand.
    assert await catalog.stock("MUG-1") == (8, 0, 8)
    assert (await catalog.reservation(placed.id)).state == catalog_pb2.RESERVATION_STATE_COMMITTED

    fulfilled = await orders.fulfil(placed.id, "TRACK-123")
    assert fulfilled.state == S.ORDER_STATE_FULFILLED
    assert fulfilled.shipment_reference == "TRACK-123"
    admin = await auth.admin_token()
    admin_id = fulfilled.history[-1].actor
    assert admin_id not in ("", ann.user_id, "system")
    # Fulfilling again returns it unchanged.
    again = await orders.fulfil(placed.id, "OTHER")
    assert again.shipment_reference == "TRACK-123"
    assert len(again.history) == len(fulfilled.history) == 4

    # The owner reads it with its whole history.
    read = await orders.get(ann.md, placed.id)
    assert [h.to_state for h in read.history] == [
        S.ORDER_STATE_PENDING,
        S.ORDER_STATE_CONFIRMED,
        S.ORDER_STATE_PAID,
        S.ORDER_STATE_FULFILLED,
    ]
    assert all(h.HasField("time") for h in read.history)

    records = await orders.consume(lambda rs: len(orders.event_types(rs, placed.id)) >= 3)
    assert orders.event_types(records, placed.id) == ["OrderPlaced", "OrderPaid", "OrderFulfilled"]
    ours = [r for r in records if decode_envelope(r.value).subject == placed.id]
    for record in ours:
        envelope = decode_envelope(record.value)
        assert record.key.decode() == placed.id  # keyed by order id
        assert envelope.source == "orders"
        assert headers_to_map(record.headers)["ce_id"] == envelope.id
    envelopes = [decode_envelope(r.value) for r in ours]
    placed_event = unpack_data(envelopes[0], events_pb2.OrderPlaced)
    assert placed_event.user_id == ann.user_id
    assert placed_event.total.amount_minor == 3697
    assert [
        (line.sku, line.quantity, line.line_total.amount_minor) for line in placed_event.lines
    ] == [
        ("MUG-1", 2, 2500),
        ("TEA-1", 3, 1197),
    ]
    paid_event = unpack_data(envelopes[1], events_pb2.OrderPaid)
    assert (paid_event.amount.amount_minor, paid_event.payment_id) == (3697, paid.payment_id)
    assert len(paid_event.lines) == 2
    assert paid_event.place_time == placed_event.place_time
    fulfilled_event = unpack_data(envelopes[2], events_pb2.OrderFulfilled)
    assert (fulfilled_event.shipment_reference, fulfilled_event.actor_id) == ("TRACK-123", admin_id)
    del admin
    # All marked sent.
    assert await unsent_outbox_rows(orders.fetch) == []


async def test_cancel_releases_stock_and_refunds_a_paid_order(make_orders, auth, catalog):
    orders = await make_orders(events=True)
    await catalog.product("LAMP-1", stock=4, price=5000)
    ann = await auth.customer()

    first = await orders.create(ann, ("LAMP-1", 3))
    assert await catalog.stock("LAMP-1") == (4, 3, 1)
    cancelled = await orders.cancel(ann.md, first.id, "changed my mind")
    assert cancelled.state == S.ORDER_STATE_CANCELLED
    assert cancelled.state_reason == "changed my mind"
    assert cancelled.history[-1].actor == ann.user_id
    # The held stock is available again; the reservation is released.
    assert await catalog.stock("LAMP-1") == (4, 0, 4)
    assert (await catalog.reservation(first.id)).state == catalog_pb2.RESERVATION_STATE_RELEASED
    # Cancelling again returns it unchanged (and emits nothing more).
    again = await orders.cancel(ann.md, first.id, "again")
    assert again.state_reason == "changed my mind"
    assert len(again.history) == len(cancelled.history)

    # A paid order: refunded, and the sold units return to stock on hand.
    second = await orders.create(ann, ("LAMP-1", 2))
    paid = await orders.pay(ann.md, second)
    assert await catalog.stock("LAMP-1") == (2, 0, 2)
    await orders.cancel(ann.md, second.id)
    assert await catalog.stock("LAMP-1") == (4, 0, 4)
    assert orders.app.payments.refunded(paid.payment_id)
    rows = await orders.fetch("SELECT release_pending, refund_pending FROM orders")
    assert {tuple(r) for r in rows} == {(False, False)}

    records = await orders.consume(lambda rs: len(orders.event_types(rs, second.id)) >= 3)
    assert orders.event_types(records, first.id) == ["OrderPlaced", "OrderCancelled"]
    assert orders.event_types(records, second.id) == ["OrderPlaced", "OrderPaid", "OrderCancelled"]
    cancel_events = [
        unpack_data(decode_envelope(r.value), events_pb2.OrderCancelled)
        for r in records
        if decode_envelope(r.value).type.endswith("OrderCancelled")
    ]
    by_order = {e.order_id: e for e in cancel_events}
    assert by_order[first.id].previous_state == S.ORDER_STATE_CONFIRMED
    assert by_order[first.id].reason == "changed my mind"
    assert by_order[first.id].actor_id == ann.user_id
    assert by_order[second.id].previous_state == S.ORDER_STATE_PAID
    assert by_order[second.id].total.amount_minor == 10000


async def test_every_illegal_transition_is_refused_with_the_current_state(orders, auth, catalog):
    await catalog.product("BOX-1", stock=50, price=100)
    ann = await auth.customer()

    def expect(failure, current: str) -> None:
        assert failure.code == grpc.StatusCode.FAILED_PRECONDITION
        assert failure.reason == "INVALID_STATE_TRANSITION"
        assert failure.domain == "orders.mercato"
        assert failure.metadata["current_state"] == current

    confirmed = await orders.create(ann, ("BOX-1", 1))
    expect(await orders.fails(orders.fulfil(confirmed.id)), "ORDER_STATE_CONFIRMED")

    paid = await orders.pay(ann.md, await orders.create(ann, ("BOX-1", 1)))
    expect(await orders.fails(orders.pay(ann.md, paid)), "ORDER_STATE_PAID")

    fulfilled = await orders.fulfil(paid.id)
    expect(await orders.fails(orders.pay(ann.md, fulfilled)), "ORDER_STATE_FULFILLED")
    expect(await orders.fails(orders.cancel(ann.md, fulfilled.id)), "ORDER_STATE_FULFILLED")

    cancelled = await orders.cancel(ann.md, (await orders.create(ann, ("BOX-1", 1))).id)
    expect(await orders.fails(orders.pay(ann.md, cancelled)), "ORDER_STATE_CANCELLED")
    expect(await orders.fails(orders.fulfil(cancelled.id)), "ORDER_STATE_CANCELLED")

    # FAILED: its reservation lapsed before payment (released behind its back here).
    lapsed = await orders.create(ann, ("BOX-1", 1))
    await catalog.stub.ReleaseStock(
        catalog_pb2.ReleaseStockRequest(order_id=lapsed.id, reason="expired"),
        metadata=catalog.service,
    )
    failure = await orders.fails(orders.pay(ann.md, lapsed))
    assert (failure.code, failure.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "RESERVATION_EXPIRED",
    )
    assert failure.metadata["current_state"] == "ORDER_STATE_FAILED"
    failed = await orders.get(ann.md, lapsed.id)
    assert failed.state == S.ORDER_STATE_FAILED
    assert failed.history[-1].actor == "system"
    # The payment was voided.
    assert all(
        orders.app.payments.refunded(c.id)
        for c in orders.app.payments.charges()
        if c.id not in (paid.payment_id,)
    )
    expect(await orders.fails(orders.pay(ann.md, failed)), "ORDER_STATE_FAILED")
    expect(await orders.fails(orders.cancel(ann.md, failed.id)), "ORDER_STATE_FAILED")
    expect(await orders.fails(orders.fulfil(failed.id)), "ORDER_STATE_FAILED")
