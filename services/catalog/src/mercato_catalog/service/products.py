"""Product use cases: reads (through the read cache), CreateProduct, UpdateProduct,
ArchiveProduct, AdjustStock.

Writes are optimistic: read, let the domain compute the new product, write it if the document
is still at the version read (else read again, up to 8 times). Each write carries its events and
invalidates the read cache.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import KW_ONLY, dataclass, replace

from mercato_catalog import publish
from mercato_catalog.cache import ProductCache
from mercato_catalog.domain.errors import SkuTaken, keeps_changing, product_not_found
from mercato_catalog.domain.listing import ProductFilter
from mercato_catalog.domain.products import (
    NewProduct,
    Product,
    ProductChanges,
    ProductState,
    archived,
    changed,
    check_etag,
    new_product,
)
from mercato_catalog.domain.stock import adjusted, low_stock_transition
from mercato_catalog.service.categories import CategoryService
from mercato_catalog.store import ProductStore, utcnow

__all__ = ["ProductService"]

_CAS_ATTEMPTS = 8

# The form of a product in the read cache (the API's serialized message); given by app.py.
Encode = Callable[[Product], bytes]


@dataclass(eq=False)
class ProductService:
    store: ProductStore
    categories: CategoryService
    cache: ProductCache
    _: KW_ONLY
    encode: Encode
    low_stock_threshold: int

    # --- reads -------------------------------------------------------------------------------

    async def get(self, sku: str) -> Product:
        product = await self.store.find(sku)
        if product is None:
            raise product_not_found(sku)
        return product

    async def get_encoded(self, sku: str) -> bytes:
        """GetProduct: the cached form of the product, from the cache or filled into it."""
        cached = await self.cache.get(sku)
        if cached is not None:
            return cached
        product = await self.get(sku)
        payload = self.encode(product)
        await self.cache.fill(sku, product.version, payload)
        return payload

    async def batch_get(self, skus: Sequence[str]) -> dict[str, Product]:
        return await self.store.batch_get(skus)

    async def list_page(
        self, flt: ProductFilter, size: int, token: str
    ) -> tuple[list[Product], str]:
        return await self.store.list_page(flt, size, token)

    # --- writes ------------------------------------------------------------------------------

    async def _written(self, product: Product | None) -> Product | None:
        if product is not None:
            await self.cache.invalidate(product.sku, product.version)
        return product

    async def _until_written(
        self, sku: str, attempt: Callable[[], Awaitable[Product | None]]
    ) -> Product:
        """Run ``attempt`` (read, compute, compare-and-set) until it is not outrun."""
        for _ in range(_CAS_ATTEMPTS):
            product = await attempt()
            if product is not None:
                return product
        raise keeps_changing(sku)

    async def create(self, new: NewProduct) -> Product:
        path = await self.categories.path(new.category_id)
        product = new_product(new, utcnow(), low_stock_threshold=self.low_stock_threshold)
        if not await self.store.insert(product, path, [publish.product_created(product)]):
            raise SkuTaken(f"SKU {new.sku!r} is taken", metadata={"sku": new.sku})
        await self._written(product)
        return product

    async def update(self, sku: str, changes: ProductChanges, etag: str) -> Product:
        async def attempt() -> Product | None:
            before = await self.get(sku)
            check_etag(before, etag)
            now = utcnow()
            after = changed(before, changes, now)
            path = None
            if "category_id" in changes.fields:
                path = await self.categories.path(after.category_id)
            event = publish.product_updated(
                sku=sku,
                changed_fields=sorted(changes.fields),
                name=after.name,
                category_id=after.category_id,
                old_price=before.price,
                new_price=after.price,
                etag=after.etag,
                when=now,
            )
            return await self._written(
                await self.store.write_fields(before, after, [event], category_path=path)
            )

        return await self._until_written(sku, attempt)

    async def archive(self, sku: str, etag: str) -> Product:
        async def attempt() -> Product | None:
            before = await self.get(sku)
            check_etag(before, etag)
            if before.state is ProductState.ARCHIVED:
                return before
            now = utcnow()
            event = publish.product_archived(sku, now)
            return await self._written(
                await self.store.write_fields(before, archived(before, now), [event])
            )

        return await self._until_written(sku, attempt)

    async def adjust_stock(
        self, sku: str, delta: int, reason: str, request_id: str, actor_id: str
    ) -> Product:
        """AdjustStock: applied once per ``request_id``; StockLow when it falls below the
        threshold."""

        async def attempt() -> Product | None:
            before, applied = await self.store.find_for_adjustment(sku, request_id)
            if before is None:
                raise product_not_found(sku)
            if applied:
                return before  # this request was applied before
            now = utcnow()
            after = adjusted(before, delta, now)
            events = [
                publish.stock_adjusted(
                    sku=sku,
                    delta=delta,
                    stock_on_hand=after.stock_on_hand,
                    reason=reason,
                    actor_id=actor_id,
                    when=now,
                )
            ]
            flag = low_stock_transition(
                before.low_stock, after.stock_available, self.low_stock_threshold
            )
            if flag is not None:
                after = replace(after, low_stock=flag)
                if flag:
                    events.append(
                        publish.stock_low(
                            sku=sku,
                            available=after.stock_available,
                            threshold=self.low_stock_threshold,
                            when=now,
                        )
                    )
            return await self._written(
                await self.store.write_stock_on_hand(before, after, request_id, events)
            )

        return await self._until_written(sku, attempt)
