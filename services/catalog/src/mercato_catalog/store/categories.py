"""Categories in MongoDB (``categories``, ``_id`` = slug)::

{_id, display_name, parent_id, ancestor_ids: [root..., parent], create_time}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from mercato_catalog.domain.listing import decode_page_token, encode_page_token
from mercato_catalog.domain.products import Category
from mercato_catalog.store.common import CATEGORIES, StoreContext, as_utc

__all__ = ["CategoryStore", "category_from_doc"]


def category_from_doc(doc: Mapping[str, Any]) -> Category:
    return Category(
        id=str(doc["_id"]),
        display_name=str(doc["display_name"]),
        parent_id=str(doc.get("parent_id", "")),
        ancestor_ids=tuple(str(a) for a in doc.get("ancestor_ids") or ()),
        create_time=as_utc(doc["create_time"]),
    )


@dataclass(eq=False)
class CategoryStore:
    ctx: StoreContext

    async def get(self, category_id: str) -> Category | None:
        doc = await self.ctx.categories.find_one({"_id": str(category_id)})
        return category_from_doc(doc) if doc is not None else None

    async def insert(self, category: Category) -> bool:
        """Store a new category; False when its id is taken."""
        return await self.ctx.insert_new(
            CATEGORIES,
            {
                "_id": category.id,
                "display_name": category.display_name,
                "parent_id": category.parent_id,
                "ancestor_ids": list(category.ancestor_ids),
                "create_time": category.create_time,
            },
        )

    async def list_page(self, size: int, token: str) -> tuple[list[Category], str]:
        position = decode_page_token(token, "categories", {"after": str})
        query: dict[str, Any] = {}
        if position is not None:
            query["_id"] = {"$gt": position["after"]}
        docs = [doc async for doc in self.ctx.categories.find(query).sort("_id", 1).limit(size + 1)]
        categories = [category_from_doc(doc) for doc in docs[:size]]
        next_token = ""
        if len(docs) > size:
            next_token = encode_page_token("categories", {"after": categories[-1].id})
        return categories, next_token
