"""Products in MongoDB: reads, listing queries and the optimistic writes of their fields and
stock on hand.

Product document (``products``, ``_id`` = SKU)::

    {_id, name, description, category_id, category_path: [ancestors..., category_id],
     price_currency, price_minor, attributes: {k: v}, state: "ACTIVE" | "ARCHIVED",
     stock_on_hand, stock_reserved, stock_available,      # available = on_hand - reserved
     low_stock: bool,                                     # StockLow emitted, not yet recovered
     holds:   {"o_<order>": "<attempt>:<q>:<ms>:<order_id>"},  # HELD units per order
     holding: true,                 # set with a hold, unset once none is left (store/stock.py)
     returns: {"o_<order>": t},                           # committed units given back (marker)
     adjustments: {"r_<request_id>": t},                  # applied AdjustStock request ids
     etag_version, version,                               # fields / any change
     create_time, update_time, archive_time,
     outbox, outbox_pending, ...}                         # mercato_common.outbox.mongo

Writes of fields and stock on hand are compare-and-set on ``version`` (the caller re-reads and
retries when it loses); the stock movements of reservations are in ``store/stock.py``. Every
write carries the events it is handed in the same single-document update.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pymongo import ReturnDocument

from mercato_catalog.domain.listing import ProductFilter, decode_page_token, encode_page_token
from mercato_catalog.domain.products import (
    Money,
    Product,
    ProductState,
    check_sku,
    etag_version,
    new_etag,
)
from mercato_catalog.store.common import PRODUCTS, StoreContext, as_utc
from mercato_common.kafka.envelope import Envelope

__all__ = ["ProductStore", "literal_pattern", "product_from_doc", "product_query"]


def product_from_doc(doc: Mapping[str, Any]) -> Product:
    archive_time = doc.get("archive_time")
    return Product(
        sku=str(doc["_id"]),
        name=str(doc["name"]),
        description=str(doc.get("description", "")),
        category_id=str(doc.get("category_id", "")),
        price=Money(str(doc["price_currency"]), int(doc["price_minor"])),
        attributes={str(k): str(v) for k, v in (doc.get("attributes") or {}).items()},
        state=ProductState(doc["state"]),
        stock_on_hand=int(doc.get("stock_on_hand", 0)),
        stock_reserved=int(doc.get("stock_reserved", 0)),
        etag=new_etag(int(doc.get("etag_version", 1))),
        version=int(doc.get("version", 1)),
        create_time=as_utc(doc["create_time"]),
        update_time=as_utc(doc["update_time"]),
        archive_time=as_utc(archive_time) if archive_time is not None else None,
        low_stock=bool(doc.get("low_stock")),
    )


def literal_pattern(text: str) -> str:
    """A regular expression matching ``text`` literally (user input is never a pattern)."""
    return re.escape(text)


def product_query(flt: ProductFilter, after_sku: str | None) -> dict[str, Any]:
    """The MongoDB filter of a listing page. Every value is a typed scalar from ``flt``, never a
    caller-supplied document, so no input can become an operator."""
    query: dict[str, Any] = {"state": flt.state.value}
    if flt.category:
        query["category_path"] = str(flt.category)
    if flt.q:
        query["name"] = {"$regex": literal_pattern(str(flt.q)), "$options": "i"}
    if flt.has_price_bound:
        query["price_currency"] = str(flt.currency_code)
        bounds: dict[str, int] = {}
        if flt.min_price_minor is not None:
            bounds["$gte"] = int(flt.min_price_minor)
        if flt.max_price_minor is not None:
            bounds["$lte"] = int(flt.max_price_minor)
        query["price_minor"] = bounds
    keys: dict[str, Any] = {}
    if flt.skus:
        keys["$in"] = [check_sku(sku, "skus") for sku in flt.skus]
    if after_sku is not None:
        keys["$gt"] = check_sku(after_sku, "page_token")
    if keys:
        query["_id"] = keys
    return query


def _request_key(request_id: str) -> str:
    """The key of an AdjustStock request id in a product's ``adjustments`` map."""
    return "r_" + uuid.UUID(request_id).hex


def _fields_doc(product: Product) -> dict[str, Any]:
    """The product's own fields (what UpdateProduct and ArchiveProduct change)."""
    return {
        "name": product.name,
        "description": product.description,
        "category_id": product.category_id,
        "price_currency": product.price.currency_code,
        "price_minor": product.price.amount_minor,
        "attributes": dict(product.attributes),
        "state": product.state.value,
        "archive_time": product.archive_time,
        "etag_version": etag_version(product.etag),
        "update_time": product.update_time,
    }


@dataclass(eq=False)
class ProductStore:
    ctx: StoreContext

    # --- reads -------------------------------------------------------------------------------

    async def find(self, sku: str) -> Product | None:
        doc = await self.ctx.products.find_one({"_id": str(sku)})
        return product_from_doc(doc) if doc is not None else None

    async def batch_get(self, skus: Sequence[str]) -> dict[str, Product]:
        # One indexed lookup per SKU, concurrently: FerretDB answers `{_id: {$in: [...]}}` with a
        # full collection scan (38 ms for 100 products, against 1 ms for one `_id` lookup), and
        # on MongoDB a handful of point reads costs no more than the `$in`. At most 100 SKUs.
        docs = await asyncio.gather(*(self.ctx.products.find_one({"_id": str(s)}) for s in skus))
        return {
            product.sku: product
            for product in (product_from_doc(doc) for doc in docs if doc is not None)
        }

    async def list_page(
        self, flt: ProductFilter, size: int, token: str
    ) -> tuple[list[Product], str]:
        fingerprint = flt.fingerprint()
        position = decode_page_token(token, "products", {"after": str}, fingerprint)
        query = product_query(flt, position["after"] if position else None)
        cursor = self.ctx.products.find(query).sort("_id", 1).limit(size + 1)
        docs = [doc async for doc in cursor]
        products = [product_from_doc(doc) for doc in docs[:size]]
        next_token = ""
        if len(docs) > size:
            next_token = encode_page_token("products", {"after": products[-1].sku}, fingerprint)
        return products, next_token

    async def find_for_adjustment(self, sku: str, request_id: str) -> tuple[Product | None, bool]:
        """The product, and whether the AdjustStock request ``request_id`` was applied to it."""
        doc = await self.ctx.products.find_one({"_id": str(sku)})
        if doc is None:
            return None, False
        applied = bool(request_id) and _request_key(request_id) in (doc.get("adjustments") or {})
        return product_from_doc(doc), applied

    # --- writes ------------------------------------------------------------------------------

    async def insert(
        self, product: Product, category_path: Sequence[str], events: Sequence[Envelope]
    ) -> bool:
        """Store a new product with its events; False when its SKU is taken."""
        doc: dict[str, Any] = {
            "_id": product.sku,
            **_fields_doc(product),
            "category_path": list(category_path),
            "stock_on_hand": product.stock_on_hand,
            "stock_reserved": product.stock_reserved,
            "stock_available": product.stock_available,
            "low_stock": product.low_stock,
            "holds": {},
            "returns": {},
            "adjustments": {},
            "version": product.version,
            "create_time": product.create_time,
        }
        return await self.ctx.insert_new(PRODUCTS, doc, events, product.create_time)

    async def _compare_and_set(self, before: Product, update: Mapping[str, Any]) -> Product | None:
        """Apply ``update`` if the document is still at the version ``before`` was read at."""
        async with self.ctx.locks.hold(PRODUCTS, before.sku):
            doc = await self.ctx.products.find_one_and_update(
                {"_id": before.sku, "version": before.version},
                update,
                return_document=ReturnDocument.AFTER,
            )
        return product_from_doc(doc) if doc is not None else None

    async def write_fields(
        self,
        before: Product,
        after: Product,
        events: Sequence[Envelope],
        category_path: Sequence[str] | None = None,
    ) -> Product | None:
        """Write the fields of ``after`` (and the new category path, if it moved) over
        ``before``; None when the product changed since it was read."""
        sets = _fields_doc(after)
        if category_path is not None:
            sets["category_path"] = list(category_path)
        update = {"$set": sets, "$inc": {"version": 1}}
        written = await self._compare_and_set(
            before, self.ctx.with_events(update, events, after.update_time)
        )
        if written is not None:
            self.ctx.announce(PRODUCTS, events)
        return written

    async def write_stock_on_hand(
        self, before: Product, after: Product, request_id: str, events: Sequence[Envelope]
    ) -> Product | None:
        """Write an AdjustStock's stock on hand (and the low-stock flag, if it turned), marking
        ``request_id`` applied; None when the product changed since it was read."""
        now = after.update_time
        sets: dict[str, Any] = {
            "stock_on_hand": after.stock_on_hand,
            "stock_available": after.stock_available,
            "update_time": now,
        }
        if after.low_stock != before.low_stock:
            sets["low_stock"] = after.low_stock
        if request_id:
            sets[f"adjustments.{_request_key(request_id)}"] = now
        update = {"$set": sets, "$inc": {"version": 1}}
        written = await self._compare_and_set(before, self.ctx.with_events(update, events, now))
        if written is not None:
            self.ctx.announce(PRODUCTS, events)
        return written
