"""The events the catalog publishes: the envelopes the use cases hand to the store's outbox.

The use cases (``service``) decide which events a change emits and build them here; the store
writes them in the changed document's own update (``mercato_common.outbox.with_outbox``):
product events in the product document (subject = SKU), reservation events in the order's
reservation document (subject = order id). One ``MongoOutboxRelay`` per collection (wired in
``app.py``) publishes them to ``mercato.catalog.events.v1``.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from google.protobuf.message import Message

from mercato.catalog.events.v1 import events_pb2
from mercato_catalog.convert import money_to_proto, timestamp
from mercato_catalog.domain.products import Money, Product
from mercato_catalog.domain.reservations import Line, ReleaseCause
from mercato_common.kafka.envelope import Envelope, new_envelope

__all__ = [
    "SOURCE",
    "product_archived",
    "product_created",
    "product_updated",
    "stock_adjusted",
    "stock_committed",
    "stock_low",
    "stock_released",
    "stock_reserved",
]

SOURCE = "catalog"


def _lines(lines: Sequence[Line]) -> list[events_pb2.StockLine]:
    return [events_pb2.StockLine(sku=line.sku, quantity=line.quantity) for line in lines]


def _envelope(data: Message, subject: str, when: datetime) -> Envelope:
    return new_envelope(data, source=SOURCE, subject=subject, time=when)


def product_created(product: Product) -> Envelope:
    data = events_pb2.ProductCreated(
        sku=product.sku,
        name=product.name,
        category_id=product.category_id,
        price=money_to_proto(product.price),
        attributes=dict(product.attributes),
        create_time=timestamp(product.create_time),
    )
    return _envelope(data, product.sku, product.create_time)


def product_updated(
    *,
    sku: str,
    changed_fields: Sequence[str],
    name: str,
    category_id: str,
    old_price: Money,
    new_price: Money,
    etag: str,
    when: datetime,
) -> Envelope:
    data = events_pb2.ProductUpdated(
        sku=sku,
        changed_fields=sorted(changed_fields),
        name=name,
        category_id=category_id,
        old_price=money_to_proto(old_price),
        new_price=money_to_proto(new_price),
        etag=etag,
        update_time=timestamp(when),
    )
    return _envelope(data, sku, when)


def product_archived(sku: str, when: datetime) -> Envelope:
    return _envelope(events_pb2.ProductArchived(sku=sku, archive_time=timestamp(when)), sku, when)


def stock_adjusted(
    *, sku: str, delta: int, stock_on_hand: int, reason: str, actor_id: str, when: datetime
) -> Envelope:
    data = events_pb2.StockAdjusted(
        sku=sku,
        delta=delta,
        stock_on_hand=stock_on_hand,
        reason=reason,
        actor_id=actor_id,
        adjust_time=timestamp(when),
    )
    return _envelope(data, sku, when)


def stock_low(*, sku: str, available: int, threshold: int, when: datetime) -> Envelope:
    data = events_pb2.StockLow(
        sku=sku, stock_available=available, threshold=threshold, detect_time=timestamp(when)
    )
    return _envelope(data, sku, when)


def stock_reserved(
    order_id: str, lines: Sequence[Line], expire_time: datetime, when: datetime
) -> Envelope:
    data = events_pb2.StockReserved(
        order_id=order_id,
        lines=_lines(lines),
        expire_time=timestamp(expire_time),
        reserve_time=timestamp(when),
    )
    return _envelope(data, order_id, when)


_CAUSES = {
    ReleaseCause.REQUESTED: events_pb2.RELEASE_CAUSE_REQUESTED,
    ReleaseCause.EXPIRED: events_pb2.RELEASE_CAUSE_EXPIRED,
}


def stock_released(
    order_id: str,
    lines: Sequence[Line],
    *,
    cause: ReleaseCause,
    was_committed: bool,
    reason: str,
    when: datetime,
) -> Envelope:
    data = events_pb2.StockReleased(
        order_id=order_id,
        lines=_lines(lines),
        cause=_CAUSES[cause],
        was_committed=was_committed,
        reason=reason,
        release_time=timestamp(when),
    )
    return _envelope(data, order_id, when)


def stock_committed(order_id: str, lines: Sequence[Line], when: datetime) -> Envelope:
    data = events_pb2.StockCommitted(
        order_id=order_id, lines=_lines(lines), commit_time=timestamp(when)
    )
    return _envelope(data, order_id, when)
