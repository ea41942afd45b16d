"""Conversions between the catalog's domain values and their protobuf forms, used by the
adapters only: the API (api.py), the events (publish.py) and the cache payload (app.py)."""

from __future__ import annotations

from mercato.catalog.v1 import catalog_pb2
from mercato.type.v1 import money_pb2
from mercato_catalog.domain.products import Category, Money, Product, ProductState
from mercato_catalog.domain.reservations import Reservation, ReservationState
from mercato_common.timestamps import optional_time, timestamp

__all__ = [
    "RESERVATION_STATE_FILTER",
    "category_to_proto",
    "encode_product",
    "money_from_proto",
    "money_to_proto",
    "optional_time",
    "product_to_proto",
    "reservation_to_proto",
    "timestamp",
]


def money_to_proto(money: Money) -> money_pb2.Money:
    return money_pb2.Money(currency_code=money.currency_code, amount_minor=money.amount_minor)


def money_from_proto(message: money_pb2.Money) -> Money:
    return Money(message.currency_code, int(message.amount_minor))


_PRODUCT_STATES = {
    ProductState.ACTIVE: catalog_pb2.PRODUCT_STATE_ACTIVE,
    ProductState.ARCHIVED: catalog_pb2.PRODUCT_STATE_ARCHIVED,
}
_RESERVATION_STATES = {
    ReservationState.HELD: catalog_pb2.RESERVATION_STATE_HELD,
    ReservationState.COMMITTED: catalog_pb2.RESERVATION_STATE_COMMITTED,
    ReservationState.RELEASED: catalog_pb2.RESERVATION_STATE_RELEASED,
    ReservationState.EXPIRED: catalog_pb2.RESERVATION_STATE_EXPIRED,
}
# ListReservations' state filter; UNSPECIFIED (absent here) lists every state.
RESERVATION_STATE_FILTER = {value: key for key, value in _RESERVATION_STATES.items()}


def product_to_proto(product: Product) -> catalog_pb2.Product:
    message = catalog_pb2.Product(
        sku=product.sku,
        name=product.name,
        description=product.description,
        category_id=product.category_id,
        price=money_to_proto(product.price),
        attributes=dict(product.attributes),
        state=_PRODUCT_STATES[product.state],
        stock_on_hand=product.stock_on_hand,
        stock_reserved=product.stock_reserved,
        stock_available=product.stock_available,
        etag=product.etag,
        create_time=timestamp(product.create_time),
        update_time=timestamp(product.update_time),
    )
    if product.archive_time is not None:
        message.archive_time.CopyFrom(timestamp(product.archive_time))
    return message


def encode_product(product: Product) -> bytes:
    """The product as the read cache keeps it: the serialized proto GetProduct answers with."""
    return product_to_proto(product).SerializeToString()


def category_to_proto(category: Category) -> catalog_pb2.Category:
    return catalog_pb2.Category(
        id=category.id,
        display_name=category.display_name,
        parent_id=category.parent_id,
        ancestor_ids=list(category.ancestor_ids),
        create_time=timestamp(category.create_time),
    )


def reservation_to_proto(reservation: Reservation) -> catalog_pb2.Reservation:
    state = reservation.state
    message = catalog_pb2.Reservation(
        order_id=reservation.order_id,
        lines=[
            catalog_pb2.ReservationLine(sku=line.sku, quantity=line.quantity)
            for line in reservation.lines
        ],
        state=(
            _RESERVATION_STATES[state]
            if state is not None
            else catalog_pb2.RESERVATION_STATE_UNSPECIFIED
        ),
        create_time=timestamp(reservation.create_time),
        update_time=timestamp(reservation.update_time),
    )
    if state is ReservationState.HELD and reservation.expire_time is not None:
        message.expire_time.CopyFrom(timestamp(reservation.expire_time))
    return message
