"""The stock movements of reservations on product documents: guarded increments, no
read-modify-write.

Each movement is one single-document update whose filter carries its precondition, so it is
applied at most once however often it is retried:

* hold: ``state: ACTIVE, stock_available >= q, holds.<order>`` absent → set the hold (and
  ``holding: true``);
* drop a hold (give back or sell): the hold of that attempt and quantity is present → unset it;
* return sold units: no ``returns.<order>`` marker → set it.

A hold is one string, ``"<attempt>:<quantity>:<held at, ms since 1970>:<order id>"``, not a
sub-document: a product carries a hold per unpaid order for as long as the order's reservation
lasts (up to 15 minutes), and a FerretDB update decodes and rewrites the whole document, at a
cost per element (docs/catalog.md: about 58 µs of server CPU per hold carried as a sub-document
of four fields, 25 µs as one string). Holds written as sub-documents ``{o, q, a, t}`` by an
earlier version are read and dropped as well.

``holding: true`` marks the products the orphan reaper reads: an equality FerretDB evaluates in
PostgreSQL (with the index on it), where ``stock_reserved > 0`` made it read every product of
the catalog every pass (measured: 3,000 products, 30 of them holding, 1.27 s per page against
21 ms). A hold sets it in the same update; it is unset, guarded by ``stock_reserved: 0``, when
the reaper finds a product holding nothing any more, so a hold taken meanwhile keeps it.

What a movement does to the counters is the domain's (:class:`StockChange`); the low-stock
flag is set by the same kind of guarded update, with the events the caller hands over.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
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


def _hold_value(order_id: str, attempt: str, quantity: int, now: datetime) -> str:
    """A hold as stored: ``<attempt>:<quantity>:<held at, ms since 1970>:<order id>``."""
    return f"{attempt}:{quantity}:{int(now.timestamp() * 1000)}:{order_id}"


def _hold_from_doc(value: Any) -> Hold | None:
    """A stored hold, as :func:`_hold_value` writes it or as a sub-document ``{o, q, a, t}``
    (an earlier version); None when it is neither."""
    if isinstance(value, str):
        parts = value.split(":", 3)
        if len(parts) != 4 or not parts[1].isdigit() or not parts[2].isdigit():
            return None
        attempt, quantity, held_ms, order_id = parts
        return Hold(
            order_id=order_id,
            quantity=int(quantity),
            attempt=attempt,
            held_at=datetime.fromtimestamp(int(held_ms) / 1000, UTC),
        )
    if isinstance(value, Mapping):
        held_at = value.get("t")
        return Hold(
            order_id=str(value.get("o", "")),
            quantity=int(value.get("q", 0)),
            attempt=str(value.get("a")),
            held_at=as_utc(held_at) if isinstance(held_at, datetime) else None,
        )
    return None


def _hold_of(key: str, attempt: str, quantity: int) -> dict[str, Any]:
    """The filter of an attempt's hold of ``quantity`` units, in either stored form."""
    prefix = "^" + re.escape(f"{attempt}:{quantity}:")
    return {
        "$or": [
            {f"holds.{key}": {"$regex": prefix}},
            {f"holds.{key}.a": attempt, f"holds.{key}.q": quantity},
        ]
    }


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
                    f"holds.{key}": _hold_value(order_id, attempt, quantity, now),
                    "holding": True,
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
        return product_from_doc(doc), _hold_from_doc(
            (doc.get("holds") or {}).get(hold_key(order_id))
        )

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
            _hold_of(key, attempt, quantity),
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
        """A page of the products marked ``holding`` (SKU after ``after``), with their holds;
        a product that holds nothing any more comes with none (:meth:`forget_holding`)."""
        cursor = (
            self.ctx.products.find(
                {"holding": True, "_id": {"$gt": after}}, projection={"holds": 1}
            )
            .sort("_id", 1)
            .limit(limit)
        )
        return [
            (
                str(doc["_id"]),
                [
                    hold
                    for hold in map(_hold_from_doc, (doc.get("holds") or {}).values())
                    if hold is not None
                ],
            )
            async for doc in cursor
        ]

    async def forget_holding(self, sku: str) -> bool:
        """Unset ``holding`` if the product holds no units (a hold taken meanwhile keeps it)."""
        async with self.ctx.locks.hold(PRODUCTS, sku):
            result = await self.ctx.products.update_one(
                {"_id": sku, "holding": True, "stock_reserved": 0}, {"$unset": {"holding": ""}}
            )
        return bool(result.modified_count)

    async def mark_holding(self) -> int:
        """Mark ``holding`` the products holding units stored before the mark existed. Run once
        at start, before anything else writes (so no write lock): one read of the products."""
        result = await self.ctx.products.update_many(
            {"stock_reserved": {"$gt": 0}, "holding": {"$exists": False}},
            {"$set": {"holding": True}},
        )
        return int(result.modified_count)
