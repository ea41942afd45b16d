"""Reading orders: one order, and listings page by page (newest first)."""

from __future__ import annotations

from mercato_orders.domain.errors import OrderNotFound
from mercato_orders.domain.model import Order
from mercato_orders.domain.rules import (
    OrderFilter,
    PageToken,
    Viewer,
    decode_page_token,
    encode_page_token,
    visible,
)
from mercato_orders.service.base import ServiceBase

__all__ = ["Reading"]


class Reading(ServiceBase):
    """GetOrder and ListOrders."""

    async def get(self, viewer: Viewer, order_id: str) -> Order:
        """The order, if the viewer may see it; else ORDER_NOT_FOUND (never a hint it exists)."""
        order = await self._find(order_id)
        if order is None or not visible(order, viewer):
            raise OrderNotFound(order_id)
        return order

    async def _find(self, order_id: str) -> Order | None:
        """The order whoever asks (the service's own reads: the payment provider's events)."""
        async with self.store.read() as tx:
            return await tx.orders.get(order_id)

    async def list_orders(
        self, viewer: Viewer, flt: OrderFilter, page_token: str, page_size: int
    ) -> tuple[list[Order], str]:
        position = decode_page_token(page_token, flt)
        async with self.store.read() as tx:
            # One more than a page: whether there is a next page at all.
            orders = await tx.orders.list_orders(flt, position, page_size + 1)
        next_token = ""
        if len(orders) > page_size:
            orders = orders[:page_size]
            last = orders[-1]
            next_token = encode_page_token(PageToken(last.create_time, last.id), flt)
        return orders, next_token
