"""The stock movements of reservations on product documents: guarded increments, no
read-modify-write.

Each movement is one single-document update whose filter carries its precondition, so it is
applied at most once however often it is retried:

* hold: ``state: ACTIVE, stock_available >= q, holds.<order>`` absent → set the hold;
* drop a hold (give back or sell): the hold of that attempt and quantity is present → unset it;
* return sold units: no ``returns.<order>`` marker → set it.

What a movement does to the counters is the domain's (:class:`StockChange`); the low-stock
flag is set by the same kind of guarded update, with the events the caller hands over.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ReturnDocument

from mercato_catalog.domain.products import Product, ProductState
from mercato_catalog.domain.stock import Hold, StockChange
from mercato_catalog.store.common import PRODUCTS, StoreContext, as_utc, hold_key
from mercato_catalog.store.products import product_from_doc
from mercato_common.kafka.envelope import Envelope

__all__ = ["StockStore"]


def _increments(change: StockChange) -> dict[str, int]:
    counters = {
        "stock_on_hand": change.on_hand,
        "stock_reserved": change.reserved,
        "stock_available": change.available,
    }
    return {name: delta for name, delta in counters.items() if delta} | {"version": 1}


def _hold_from_doc(value: Mapping[str, Any]) -> Hold:
    held_at = value.get("t")
    return Hold(
        order_id=str(value.get("o", "")),
        quantity=int(value.get("q", 0)),
        attempt=str(value.get("a")),
        held_at=as_utc(held_at) if isinstance(held_at, datetime) else None,
    )


@dataclass(eq=False)
class StockStore:
    ctx: StoreContext

    async def _guarded(
        self, sku: str, query: Mapping[str, Any], update: Mapping[str, Any]
    ) -> Product | None:
        async with self.ctx.locks.hold(PRODUCTS, sku):
            doc = await self.ctx.products.find_one_and_update(
                {"_id": sku, **query}, update, return_document=ReturnDocument.AFTER
            )
        return product_from_doc(doc) if doc is not None else None

    async def take_hold(
        self, sku: str, order_id: str, quantity: int, attempt: str, now: datetime
    ) -> Product | None:
        """Hold ``quantity`` available units for the order's attempt; None when the product is
        missing, archived, short of stock or already holds units for the order."""
        key = hold_key(order_id)
        return await self._guarded(
            sku,
            {
                "state": ProductState.ACTIVE.value,
                "stock_available": {"$gte": quantity},
                f"holds.{key}": {"$exists": False},
            },
            {
                "$set": {
                    f"holds.{key}": {"o": order_id, "q": quantity, "a": attempt, "t": now},
                    "update_time": now,
                },
                "$inc": _increments(StockChange.hold(quantity)),
            },
        )

    async def find_hold(self, sku: str, order_id: str) -> tuple[Product | None, Hold | None]:
        """The product and the hold it has for the order, if any."""
        doc = await self.ctx.products.find_one({"_id": str(sku)})
        if doc is None:
            return None, None
        hold = (doc.get("holds") or {}).get(hold_key(order_id))
        return product_from_doc(doc), _hold_from_doc(hold) if hold is not None else None

    async def drop_hold(
        self,
        sku: str,
        order_id: str,
        attempt: str,
        quantity: int,
        change: StockChange,
        now: datetime,
    ) -> Product | None:
        """Remove the attempt's hold of ``quantity`` units and apply ``change`` (give the units
        back or sell them); None when there is no such hold (already done)."""
        key = hold_key(order_id)
        return await self._guarded(
            sku,
            {f"holds.{key}.a": attempt, f"holds.{key}.q": quantity},
            {
                "$unset": {f"holds.{key}": ""},
                "$set": {"update_time": now},
                "$inc": _increments(change),
            },
        )

    async def return_sold(
        self, sku: str, order_id: str, change: StockChange, now: datetime
    ) -> Product | None:
        """Apply ``change`` (sold units back on hand) once per order, leaving a
        ``returns.<order>`` marker; None when it was done before."""
        key = hold_key(order_id)
        return await self._guarded(
            sku,
            {f"returns.{key}": {"$exists": False}},
            {"$set": {f"returns.{key}": now, "update_time": now}, "$inc": _increments(change)},
        )

    async def forget_return(self, sku: str, order_id: str) -> None:
        """Drop a ``returns`` marker once no retry of that release can still be running."""
        key = hold_key(order_id)
        async with self.ctx.locks.hold(PRODUCTS, sku):
            await self.ctx.products.update_one(
                {"_id": sku, f"returns.{key}": {"$exists": True}},
                {"$unset": {f"returns.{key}": ""}},
            )

    async def set_low_stock(
        self, sku: str, low: bool, threshold: int, events: Sequence[Envelope], now: datetime
    ) -> None:
        """Turn the low-stock flag, with ``events``, only if it still needs turning: the flag in
        the filter makes the events exactly-once when several movements cross the threshold at
        the same time."""
        query: dict[str, Any] = {"_id": sku}
        if low:
            query |= {"low_stock": {"$ne": True}, "stock_available": {"$lt": threshold}}
        else:
            query |= {"low_stock": True, "stock_available": {"$gte": threshold}}
        update = self.ctx.with_events({"$set": {"low_stock": low}}, events, now)
        async with self.ctx.locks.hold(PRODUCTS, sku):
            result = await self.ctx.products.update_one(query, update)
        if result.modified_count:
            self.ctx.announce(PRODUCTS, events)

    async def holds_page(self, after: str, limit: int) -> list[tuple[str, list[Hold]]]:
        """A page of products holding reserved units (SKU after ``after``), with their holds."""
        cursor = (
            self.ctx.products.find(
                {"stock_reserved": {"$gt": 0}, "_id": {"$gt": after}}, projection={"holds": 1}
            )
            .sort("_id", 1)
            .limit(limit)
        )
        return [
            (
                str(doc["_id"]),
                [
                    _hold_from_doc(hold)
                    for hold in (doc.get("holds") or {}).values()
                    if isinstance(hold, Mapping)
                ],
            )
            async for doc in cursor
        ]
