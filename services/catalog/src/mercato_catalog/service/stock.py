"""Stock movements of reservations, and what follows each one on the product: the read cache
invalidation and the low-stock check (StockLow once per fall below the threshold)."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

from mercato_catalog import publish
from mercato_catalog.cache import ProductCache
from mercato_catalog.domain.errors import ShortageKind
from mercato_catalog.domain.products import Product
from mercato_catalog.domain.stock import (
    HoldOutcome,
    HoldResult,
    StockChange,
    hold_refusal,
    low_stock_transition,
)
from mercato_catalog.store import StockStore, utcnow

__all__ = ["StockMovements"]

# A hold refused although nothing stood in its way (stock changed in between) is tried again.
_HOLD_TRIES = 3


@dataclass(eq=False)
class StockMovements:
    store: StockStore
    cache: ProductCache
    _: KW_ONLY
    low_stock_threshold: int

    async def hold(self, sku: str, order_id: str, quantity: int, attempt: str) -> HoldResult:
        """Take ``quantity`` available units for the order, once per attempt."""
        for _ in range(_HOLD_TRIES):
            held = await self.store.take_hold(sku, order_id, quantity, attempt, utcnow())
            if await self._moved(held):
                return HoldResult(HoldOutcome.HELD, product=held)
            product, existing = await self.store.find_hold(sku, order_id)
            refusal = hold_refusal(product, existing, attempt, quantity)
            if refusal is not None:
                return refusal
        return HoldResult.refused(ShortageKind.OUT_OF_STOCK)

    async def unhold(self, sku: str, order_id: str, attempt: str, quantity: int) -> bool:
        """Give held units back to available stock (compensation, release, expiry)."""
        change = StockChange.unhold(quantity)
        return await self._moved(
            await self.store.drop_hold(sku, order_id, attempt, quantity, change, utcnow())
        )

    async def sell(self, sku: str, order_id: str, attempt: str, quantity: int) -> bool:
        """Turn held units into a sale: they leave stock on hand (commit)."""
        change = StockChange.sale(quantity)
        return await self._moved(
            await self.store.drop_hold(sku, order_id, attempt, quantity, change, utcnow())
        )

    async def give_back(self, sku: str, order_id: str, quantity: int) -> bool:
        """Return sold units to stock on hand, once per order (release after commit)."""
        change = StockChange.give_back(quantity)
        return await self._moved(await self.store.return_sold(sku, order_id, change, utcnow()))

    async def forget_return(self, sku: str, order_id: str) -> None:
        await self.store.forget_return(sku, order_id)

    async def _moved(self, product: Product | None) -> bool:
        """After a movement (``product`` as written; None: nothing moved)."""
        if product is None:
            return False
        await self.cache.invalidate(product.sku, product.version)
        flag = low_stock_transition(
            product.low_stock, product.stock_available, self.low_stock_threshold
        )
        if flag is not None:
            now = utcnow()
            events = []
            if flag:
                events.append(
                    publish.stock_low(
                        sku=product.sku,
                        available=product.stock_available,
                        threshold=self.low_stock_threshold,
                        when=now,
                    )
                )
            await self.store.set_low_stock(product.sku, flag, self.low_stock_threshold, events, now)
        return True
