"""Products and categories in MongoDB.

Product document (``products``, ``_id`` = SKU)::

    {_id, name, description, category_id, category_path: [ancestors..., category_id],
     price_currency, price_minor, attributes: {k: v}, state: "ACTIVE" | "ARCHIVED",
     stock_on_hand, stock_reserved, stock_available,      # available = on_hand - reserved
     low_stock: bool,                                     # StockLow emitted, not yet recovered
     holds:   {"o_<order>": {o: order_id, q, a: attempt, t}},   # HELD units per order
     returns: {"o_<order>": t},                           # committed units given back (marker)
     adjustments: {"r_<request_id>": t},                  # applied AdjustStock request ids
     etag_version, version,                               # fields / any change
     create_time, update_time, archive_time,
     outbox, outbox_pending, ...}                         # mercato_common.outbox.mongo

Every write is one single-document update whose filter carries its precondition (stock
available, hold present or absent, expected version), with its events in the same update.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from mercato_catalog import events
from mercato_catalog.domain import (
    MAX_STOCK,
    Category,
    CategoryMissing,
    CategoryTaken,
    ConcurrentModification,
    EtagMismatch,
    Money,
    NewProduct,
    Product,
    ProductArchived,
    ProductChanges,
    ProductFilter,
    ProductNotFound,
    ProductState,
    Shortage,
    ShortageKind,
    SkuTaken,
    StockLimitExceeded,
    StockUnavailable,
    category_ancestors,
    decode_page_token,
    encode_page_token,
    hold_key,
    low_stock_transition,
    new_etag,
    product_query,
)
from mercato_catalog.store.common import PRODUCTS, StoreContext, as_utc, utcnow
from mercato_common.kafka.envelope import Envelope
from mercato_common.outbox import outbox_fields, with_outbox

__all__ = ["CategoryStore", "HoldOutcome", "ProductStore", "product_from_doc"]

_CAS_ATTEMPTS = 8


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
    )


def category_from_doc(doc: Mapping[str, Any]) -> Category:
    return Category(
        id=str(doc["_id"]),
        display_name=str(doc["display_name"]),
        parent_id=str(doc.get("parent_id", "")),
        ancestor_ids=tuple(str(a) for a in doc.get("ancestor_ids") or ()),
        create_time=as_utc(doc["create_time"]),
    )


class HoldOutcome(Enum):
    HELD = "HELD"  # units taken now
    ALREADY = "ALREADY"  # this attempt holds them already (a retry)
    CONFLICT = "CONFLICT"  # an older attempt of the same order still holds them
    NOT_FOUND = "NOT_FOUND"
    ARCHIVED = "ARCHIVED"
    OUT_OF_STOCK = "OUT_OF_STOCK"


@dataclass(frozen=True, slots=True)
class HoldResult:
    outcome: HoldOutcome
    other_attempt: str = ""
    other_quantity: int = 0


class CategoryStore:
    def __init__(self, ctx: StoreContext) -> None:
        self._ctx = ctx

    async def get(self, category_id: str) -> Category | None:
        doc = await self._ctx.categories.find_one({"_id": str(category_id)})
        return category_from_doc(doc) if doc is not None else None

    async def create(self, category_id: str, display_name: str, parent_id: str) -> Category:
        parent = None
        if parent_id:
            parent = await self.get(parent_id)
            if parent is None:
                raise CategoryMissing(
                    f"parent category {parent_id!r} does not exist",
                    metadata={"category_id": parent_id},
                )
        now = utcnow()
        category = Category(
            id=category_id,
            display_name=display_name,
            parent_id=parent_id,
            ancestor_ids=category_ancestors(parent),
            create_time=now,
        )
        try:
            await self._ctx.categories.insert_one(
                {
                    "_id": category.id,
                    "display_name": category.display_name,
                    "parent_id": category.parent_id,
                    "ancestor_ids": list(category.ancestor_ids),
                    "create_time": now,
                }
            )
        except DuplicateKeyError:
            raise CategoryTaken(
                f"category {category_id!r} exists", metadata={"category_id": category_id}
            ) from None
        return category

    async def list_page(self, size: int, token: str) -> tuple[list[Category], str]:
        position = decode_page_token(token, "categories", {"after": str})
        query: dict[str, Any] = {}
        if position is not None:
            query["_id"] = {"$gt": position["after"]}
        docs = [
            doc async for doc in self._ctx.categories.find(query).sort("_id", 1).limit(size + 1)
        ]
        categories = [category_from_doc(doc) for doc in docs[:size]]
        next_token = ""
        if len(docs) > size:
            next_token = encode_page_token("categories", {"after": categories[-1].id})
        return categories, next_token


class ProductStore:
    def __init__(self, ctx: StoreContext, categories: CategoryStore) -> None:
        self._ctx = ctx
        self._categories = categories

    # --- reads -------------------------------------------------------------------------------

    async def find(self, sku: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self._ctx.products.find_one({"_id": str(sku)})
        return doc

    async def get(self, sku: str) -> Product:
        doc = await self.find(sku)
        if doc is None:
            raise ProductNotFound(f"product {sku!r} does not exist", metadata={"sku": sku})
        return product_from_doc(doc)

    async def batch_get(self, skus: Sequence[str]) -> dict[str, Product]:
        # One indexed lookup per SKU, concurrently: FerretDB answers `{_id: {$in: [...]}}` with a
        # full collection scan (38 ms for 100 products, against 1 ms for one `_id` lookup), and
        # on MongoDB a handful of point reads costs no more than the `$in`. At most 100 SKUs.
        docs = await asyncio.gather(*(self._ctx.products.find_one({"_id": str(s)}) for s in skus))
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
        cursor = self._ctx.products.find(query).sort("_id", 1).limit(size + 1)
        docs = [doc async for doc in cursor]
        products = [product_from_doc(doc) for doc in docs[:size]]
        next_token = ""
        if len(docs) > size:
            next_token = encode_page_token("products", {"after": products[-1].sku}, fingerprint)
        return products, next_token

    # --- product fields ----------------------------------------------------------------------

    async def _category_path(self, category_id: str) -> list[str]:
        if not category_id:
            return []
        category = await self._categories.get(category_id)
        if category is None:
            raise CategoryMissing(
                f"category {category_id!r} does not exist", metadata={"category_id": category_id}
            )
        return list(category.path)

    async def create(self, new: NewProduct) -> Product:
        path = await self._category_path(new.category_id)
        now = utcnow()
        doc: dict[str, Any] = {
            "_id": new.sku,
            "name": new.name,
            "description": new.description,
            "category_id": new.category_id,
            "category_path": path,
            "price_currency": new.price.currency_code,
            "price_minor": new.price.amount_minor,
            "attributes": dict(new.attributes),
            "state": ProductState.ACTIVE.value,
            "stock_on_hand": 0,
            "stock_reserved": 0,
            "stock_available": 0,
            # Created without stock: already "low", so no StockLow until it recovers first.
            "low_stock": self._ctx.low_stock_threshold > 0,
            "holds": {},
            "returns": {},
            "adjustments": {},
            "etag_version": 1,
            "version": 1,
            "create_time": now,
            "update_time": now,
            "archive_time": None,
        }
        product = product_from_doc(doc)
        doc.update(outbox_fields([(events.product_created(product), self._ctx.topic)], now=now))
        try:
            async with self._ctx.locks.hold(PRODUCTS, new.sku):
                await self._ctx.products.insert_one(doc)
        except DuplicateKeyError:
            raise SkuTaken(f"SKU {new.sku!r} is taken", metadata={"sku": new.sku}) from None
        await self._ctx.on_product_written(product.sku, product.version)
        return product

    async def _cas(
        self, doc: Mapping[str, Any], update: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        """Apply ``update`` if the document is still at the version it was read at."""
        async with self._ctx.locks.hold(PRODUCTS, doc["_id"]):
            result: dict[str, Any] | None = await self._ctx.products.find_one_and_update(
                {"_id": doc["_id"], "version": doc["version"]},
                update,
                return_document=ReturnDocument.AFTER,
            )
        if result is not None:
            await self._ctx.on_product_written(str(result["_id"]), int(result["version"]))
        return result

    async def _read_for_write(self, sku: str, etag: str) -> dict[str, Any]:
        doc = await self.find(sku)
        if doc is None:
            raise ProductNotFound(f"product {sku!r} does not exist", metadata={"sku": sku})
        current = new_etag(int(doc["etag_version"]))
        if etag and etag != current:
            raise EtagMismatch(
                "the product changed since it was read; re-read it and retry",
                metadata={"sku": sku, "current_etag": current},
            )
        return doc

    async def update(self, sku: str, changes: ProductChanges, etag: str) -> Product:
        for _ in range(_CAS_ATTEMPTS):
            doc = await self._read_for_write(sku, etag)
            before = product_from_doc(doc)
            if before.state is ProductState.ARCHIVED:
                raise ProductArchived(f"product {sku!r} is archived", metadata={"sku": sku})
            fields: dict[str, Any] = {}
            if "name" in changes.fields:
                fields["name"] = changes.name
            if "description" in changes.fields:
                fields["description"] = changes.description
            if "category_id" in changes.fields:
                fields["category_id"] = changes.category_id
                fields["category_path"] = await self._category_path(changes.category_id)
            new_price = before.price
            if "price" in changes.fields and changes.price is not None:
                new_price = changes.price
                fields["price_currency"] = new_price.currency_code
                fields["price_minor"] = new_price.amount_minor
            if "attributes" in changes.fields:
                fields["attributes"] = dict(changes.attributes)
            now = utcnow()
            etag_version = int(doc["etag_version"]) + 1
            event = events.product_updated(
                sku=sku,
                changed_fields=sorted(changes.fields),
                name=str(fields.get("name", before.name)),
                category_id=str(fields.get("category_id", before.category_id)),
                old_price=before.price,
                new_price=new_price,
                etag=new_etag(etag_version),
                when=now,
            )
            update = with_outbox(
                {
                    "$set": {**fields, "update_time": now},
                    "$inc": {"etag_version": 1, "version": 1},
                },
                [(event, self._ctx.topic)],
                now=now,
            )
            result = await self._cas(doc, update)
            if result is not None:
                return product_from_doc(result)
        raise ConcurrentModification(
            f"product {sku!r} keeps changing; retry", metadata={"sku": sku}
        )

    async def archive(self, sku: str, etag: str) -> Product:
        for _ in range(_CAS_ATTEMPTS):
            doc = await self._read_for_write(sku, etag)
            if doc["state"] == ProductState.ARCHIVED.value:
                return product_from_doc(doc)
            now = utcnow()
            update = with_outbox(
                {
                    "$set": {
                        "state": ProductState.ARCHIVED.value,
                        "archive_time": now,
                        "update_time": now,
                    },
                    "$inc": {"etag_version": 1, "version": 1},
                },
                [(events.product_archived(sku, now), self._ctx.topic)],
                now=now,
            )
            result = await self._cas(doc, update)
            if result is not None:
                return product_from_doc(result)
        raise ConcurrentModification(
            f"product {sku!r} keeps changing; retry", metadata={"sku": sku}
        )

    async def adjust_stock(
        self, sku: str, delta: int, reason: str, request_id: str, actor_id: str
    ) -> Product:
        request_key = "r_" + uuid.UUID(request_id).hex if request_id else ""
        for _ in range(_CAS_ATTEMPTS):
            doc = await self.find(sku)
            if doc is None:
                raise ProductNotFound(f"product {sku!r} does not exist", metadata={"sku": sku})
            if request_key and request_key in (doc.get("adjustments") or {}):
                return product_from_doc(doc)  # this request was applied before
            on_hand = int(doc["stock_on_hand"]) + delta
            reserved = int(doc["stock_reserved"])
            if on_hand < reserved:
                raise StockUnavailable(
                    [
                        Shortage(
                            sku,
                            ShortageKind.OUT_OF_STOCK,
                            f"stock on hand would fall below the {reserved} units reserved",
                        )
                    ]
                )
            if on_hand > MAX_STOCK:
                raise StockLimitExceeded("stock on hand would exceed 2^31-1", metadata={"sku": sku})
            now = utcnow()
            available = on_hand - reserved
            evts: list[tuple[Envelope, str]] = [
                (
                    events.stock_adjusted(
                        sku=sku,
                        delta=delta,
                        stock_on_hand=on_hand,
                        reason=reason,
                        actor_id=actor_id,
                        when=now,
                    ),
                    self._ctx.topic,
                )
            ]
            sets: dict[str, Any] = {
                "stock_on_hand": on_hand,
                "stock_available": available,
                "update_time": now,
            }
            flag = low_stock_transition(
                bool(doc.get("low_stock")), available, self._ctx.low_stock_threshold
            )
            if flag is not None:
                sets["low_stock"] = flag
                if flag:
                    evts.append((self._stock_low(sku, available, now), self._ctx.topic))
            if request_key:
                sets[f"adjustments.{request_key}"] = now
            update = with_outbox({"$set": sets, "$inc": {"version": 1}}, evts, now=now)
            result = await self._cas(doc, update)
            if result is not None:
                return product_from_doc(result)
        raise ConcurrentModification(
            f"product {sku!r} keeps changing; retry", metadata={"sku": sku}
        )

    def _stock_low(self, sku: str, available: int, now: Any) -> Envelope:
        return events.stock_low(
            sku=sku, available=available, threshold=self._ctx.low_stock_threshold, when=now
        )

    # --- stock movements of reservations (guarded increments, no read-modify-write) ----------

    async def _guarded(
        self, sku: str, query: Mapping[str, Any], update: Mapping[str, Any]
    ) -> dict[str, Any] | None:
        async with self._ctx.locks.hold(PRODUCTS, sku):
            doc: dict[str, Any] | None = await self._ctx.products.find_one_and_update(
                {"_id": sku, **query}, update, return_document=ReturnDocument.AFTER
            )
        if doc is not None:
            await self._ctx.on_product_written(sku, int(doc["version"]))
            await self._check_low_stock(doc)
        return doc

    async def _check_low_stock(self, doc: Mapping[str, Any]) -> None:
        """Raise or clear the low-stock flag after a stock movement (StockLow once per fall).

        A guarded update of its own: the flag in the filter makes the event exactly-once even
        when several movements cross the threshold at the same time.
        """
        threshold = self._ctx.low_stock_threshold
        available = int(doc["stock_available"])
        flag = low_stock_transition(bool(doc.get("low_stock")), available, threshold)
        if flag is None:
            return
        sku = str(doc["_id"])
        now = utcnow()
        if flag:
            query: dict[str, Any] = {
                "_id": sku,
                "low_stock": {"$ne": True},
                "stock_available": {"$lt": threshold},
            }
            update = with_outbox(
                {"$set": {"low_stock": True}},
                [(self._stock_low(sku, available, now), self._ctx.topic)],
                now=now,
            )
        else:
            query = {"_id": sku, "low_stock": True, "stock_available": {"$gte": threshold}}
            update = {"$set": {"low_stock": False}}
        async with self._ctx.locks.hold(PRODUCTS, sku):
            await self._ctx.products.update_one(query, update)

    async def hold(self, sku: str, order_id: str, quantity: int, attempt: str) -> HoldResult:
        """Take ``quantity`` available units for the order, once per attempt."""
        key = hold_key(order_id)
        for _ in range(3):
            now = utcnow()
            done = await self._guarded(
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
                    "$inc": {
                        "stock_reserved": quantity,
                        "stock_available": -quantity,
                        "version": 1,
                    },
                },
            )
            if done is not None:
                return HoldResult(HoldOutcome.HELD)
            doc = await self.find(sku)
            if doc is None:
                return HoldResult(HoldOutcome.NOT_FOUND)
            existing = (doc.get("holds") or {}).get(key)
            if existing is not None:
                if existing.get("a") == attempt:
                    return HoldResult(HoldOutcome.ALREADY)
                return HoldResult(
                    HoldOutcome.CONFLICT, str(existing.get("a")), int(existing.get("q", 0))
                )
            if doc.get("state") != ProductState.ACTIVE.value:
                return HoldResult(HoldOutcome.ARCHIVED)
            if int(doc.get("stock_available", 0)) < quantity:
                return HoldResult(HoldOutcome.OUT_OF_STOCK)
            # The stock changed between the update and the read: try again.
        return HoldResult(HoldOutcome.OUT_OF_STOCK)

    async def unhold(self, sku: str, order_id: str, attempt: str, quantity: int) -> bool:
        """Give held units back to available stock (compensation, release, expiry)."""
        key = hold_key(order_id)
        now = utcnow()
        done = await self._guarded(
            sku,
            {f"holds.{key}.a": attempt, f"holds.{key}.q": quantity},
            {
                "$unset": {f"holds.{key}": ""},
                "$set": {"update_time": now},
                "$inc": {"stock_reserved": -quantity, "stock_available": quantity, "version": 1},
            },
        )
        return done is not None

    async def sell(self, sku: str, order_id: str, attempt: str, quantity: int) -> bool:
        """Turn held units into a sale: they leave stock on hand (commit)."""
        key = hold_key(order_id)
        now = utcnow()
        done = await self._guarded(
            sku,
            {f"holds.{key}.a": attempt, f"holds.{key}.q": quantity},
            {
                "$unset": {f"holds.{key}": ""},
                "$set": {"update_time": now},
                "$inc": {"stock_on_hand": -quantity, "stock_reserved": -quantity, "version": 1},
            },
        )
        return done is not None

    async def give_back(self, sku: str, order_id: str, quantity: int) -> bool:
        """Return sold units to stock on hand, once per order (marker ``returns.<order>``)."""
        key = hold_key(order_id)
        now = utcnow()
        done = await self._guarded(
            sku,
            {f"returns.{key}": {"$exists": False}},
            {
                "$set": {f"returns.{key}": now, "update_time": now},
                "$inc": {"stock_on_hand": quantity, "stock_available": quantity, "version": 1},
            },
        )
        return done is not None

    async def forget_return(self, sku: str, order_id: str) -> None:
        """Drop a ``returns`` marker once no retry of that release can still be running."""
        key = hold_key(order_id)
        async with self._ctx.locks.hold(PRODUCTS, sku):
            await self._ctx.products.update_one(
                {"_id": sku, f"returns.{key}": {"$exists": True}},
                {"$unset": {f"returns.{key}": ""}},
            )

    async def products_with_holds(self, after: str, limit: int) -> list[dict[str, Any]]:
        """A page of products holding reserved units, by SKU after ``after``."""
        return [
            doc
            async for doc in self._ctx.products.find(
                {"stock_reserved": {"$gt": 0}, "_id": {"$gt": after}}, projection={"holds": 1}
            )
            .sort("_id", 1)
            .limit(limit)
        ]
