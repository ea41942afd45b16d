"""Category use cases: CreateCategory, ListCategories, and the path a product is filed under."""

from __future__ import annotations

from dataclasses import dataclass

from mercato_catalog.domain.errors import CategoryMissing, CategoryTaken
from mercato_catalog.domain.products import Category, category_ancestors
from mercato_catalog.store import CategoryStore, utcnow

__all__ = ["CategoryService"]


def _missing(category_id: str, what: str = "category") -> CategoryMissing:
    return CategoryMissing(
        f"{what} {category_id!r} does not exist", metadata={"category_id": category_id}
    )


@dataclass(eq=False)
class CategoryService:
    store: CategoryStore

    async def create(self, category_id: str, display_name: str, parent_id: str) -> Category:
        parent = None
        if parent_id:
            parent = await self.store.get(parent_id)
            if parent is None:
                raise _missing(parent_id, "parent category")
        category = Category(
            id=category_id,
            display_name=display_name,
            parent_id=parent_id,
            ancestor_ids=category_ancestors(parent),
            create_time=utcnow(),
        )
        if not await self.store.insert(category):
            raise CategoryTaken(
                f"category {category_id!r} exists", metadata={"category_id": category_id}
            )
        return category

    async def list_page(self, size: int, token: str) -> tuple[list[Category], str]:
        return await self.store.list_page(size, token)

    async def path(self, category_id: str) -> list[str]:
        """What a product in ``category_id`` is filed under (none for no category)."""
        if not category_id:
            return []
        category = await self.store.get(category_id)
        if category is None:
            raise _missing(category_id)
        return list(category.path)
