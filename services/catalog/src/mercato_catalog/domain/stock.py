"""Stock: what each movement does to a product's counters, holds, adjustments, low stock.

A product counts ``stock_on_hand`` (in the warehouse), ``stock_reserved`` (held for orders) and
``stock_available`` (on hand minus reserved). A reservation holds units per order and attempt
(:class:`Hold`); committing sells them (they leave stock on hand); releasing gives them back.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum

from mercato_catalog.domain.errors import (
    Shortage,
    ShortageKind,
    StockLimitExceeded,
    StockUnavailable,
)
from mercato_catalog.domain.products import Product, ProductState

__all__ = [
    "MAX_STOCK",
    "Hold",
    "HoldOutcome",
    "HoldResult",
    "StockChange",
    "adjusted",
    "hold_refusal",
    "low_stock_transition",
    "shortage",
]

MAX_STOCK = 2**31 - 1


@dataclass(frozen=True, slots=True)
class StockChange:
    """What one movement adds to a product's counters (available follows on hand - reserved)."""

    on_hand: int = 0
    reserved: int = 0

    @property
    def available(self) -> int:
        return self.on_hand - self.reserved

    @classmethod
    def hold(cls, quantity: int) -> StockChange:
        """Units held for an order: reserved, no longer available."""
        return cls(reserved=quantity)

    @classmethod
    def unhold(cls, quantity: int) -> StockChange:
        """Held units given back (compensation, release, expiry): available again."""
        return cls(reserved=-quantity)

    @classmethod
    def sale(cls, quantity: int) -> StockChange:
        """Held units sold (commit): they leave stock on hand."""
        return cls(on_hand=-quantity, reserved=-quantity)

    @classmethod
    def give_back(cls, quantity: int) -> StockChange:
        """Sold units returned (release after commit): on hand and available again."""
        return cls(on_hand=quantity)


def adjusted(product: Product, delta: int, now: datetime) -> Product:
    """The product after an AdjustStock of ``delta``: never below what is reserved, never above
    2^31-1."""
    on_hand = product.stock_on_hand + delta
    reserved = product.stock_reserved
    if on_hand < reserved:
        raise StockUnavailable(
            [
                Shortage(
                    product.sku,
                    ShortageKind.OUT_OF_STOCK,
                    f"stock on hand would fall below the {reserved} units reserved",
                )
            ]
        )
    if on_hand > MAX_STOCK:
        raise StockLimitExceeded("stock on hand would exceed 2^31-1", metadata={"sku": product.sku})
    return replace(product, stock_on_hand=on_hand, update_time=now)


def low_stock_transition(flagged: bool, available: int, threshold: int) -> bool | None:
    """New value of a product's low-stock flag, or None when it does not change.

    True means available stock just fell below ``threshold`` (emit StockLow once); False
    means it recovered (re-arm). A threshold of 0 or less disables the alert.
    """
    if threshold <= 0:
        return None
    low = available < threshold
    if low and not flagged:
        return True
    if flagged and not low:
        return False
    return None


@dataclass(frozen=True, slots=True)
class Hold:
    """Units a product holds for one attempt of an order's reservation."""

    order_id: str
    quantity: int
    attempt: str
    held_at: datetime | None  # None: unreadable (never reaped by age)

    def older_than(self, when: datetime) -> bool:
        return self.held_at is not None and self.held_at <= when


class HoldOutcome(Enum):
    HELD = "HELD"  # units taken now
    ALREADY = "ALREADY"  # this attempt holds them already (a retry)
    CONFLICT = "CONFLICT"  # an older attempt of the same order still holds them
    REFUSED = "REFUSED"  # the product cannot give them (``HoldResult.refusal`` says why)


@dataclass(frozen=True, slots=True)
class HoldResult:
    outcome: HoldOutcome
    other: Hold | None = None  # with CONFLICT: the older attempt's hold
    refusal: ShortageKind | None = None  # with REFUSED
    product: Product | None = None  # with HELD: as written; with ALREADY: as read

    @property
    def holds(self) -> bool:
        """Whether the attempt holds the units after it (taken now or before)."""
        return self.outcome in (HoldOutcome.HELD, HoldOutcome.ALREADY)

    @classmethod
    def refused(cls, kind: ShortageKind) -> HoldResult:
        return cls(HoldOutcome.REFUSED, refusal=kind)


def _refusal(product: Product | None, quantity: int) -> ShortageKind | None:
    """What keeps ``quantity`` units of ``product`` from being held (None: nothing)."""
    if product is None:
        return ShortageKind.NOT_FOUND
    if product.state is not ProductState.ACTIVE:
        return ShortageKind.ARCHIVED
    if product.stock_available < quantity:
        return ShortageKind.OUT_OF_STOCK
    return None


def hold_refusal(
    product: Product | None, existing: Hold | None, attempt: str, quantity: int
) -> HoldResult | None:
    """Why a hold was not taken, read after the guarded update refused it; None when nothing
    stands in the way any more (the stock changed in between: try again)."""
    if existing is not None:
        if existing.attempt == attempt:
            return HoldResult(HoldOutcome.ALREADY, product=product)
        return HoldResult(HoldOutcome.CONFLICT, existing)
    kind = _refusal(product, quantity)
    return HoldResult.refused(kind) if kind is not None else None


_DESCRIPTIONS = {
    ShortageKind.NOT_FOUND: "no such product",
    ShortageKind.ARCHIVED: "the product is archived",
    ShortageKind.OUT_OF_STOCK: "not enough stock available",
}


def shortage(sku: str, kind: ShortageKind) -> Shortage:
    """The shortage a refused hold reports."""
    return Shortage(sku, kind, _DESCRIPTIONS[kind])
