"""The catalog's errors: one root (:class:`CatalogError`, domain ``catalog.mercato``), one
subclass per reason, and the constructors of the ones raised in several places."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

from mercato_common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MercatoError,
    NotFound,
    PreconditionViolation,
)

__all__ = [
    "CatalogError",
    "CategoryMissing",
    "CategoryTaken",
    "CategoryTooDeep",
    "ConcurrentModification",
    "EtagMismatch",
    "InvalidPageToken",
    "InvalidRequest",
    "ProductArchived",
    "ProductNotFound",
    "ReservationBusy",
    "ReservationClosed",
    "ReservationMismatch",
    "ReservationNotFound",
    "Shortage",
    "ShortageKind",
    "SkuTaken",
    "StockLimitExceeded",
    "StockUnavailable",
    "invalid",
    "keeps_changing",
    "product_not_found",
    "reservation_busy",
    "reservation_closed",
    "reservation_mismatch",
    "reservation_not_found",
]


class CatalogError(MercatoError):
    """Root of the catalog's errors."""

    domain: ClassVar[str] = "catalog.mercato"


class ProductNotFound(CatalogError, NotFound):
    default_reason = "PRODUCT_NOT_FOUND"


class CategoryMissing(CatalogError, FailedPrecondition):
    """A write names a category that does not exist."""

    default_reason = "CATEGORY_NOT_FOUND"


class CategoryTooDeep(CatalogError, FailedPrecondition):
    default_reason = "CATEGORY_TOO_DEEP"


class SkuTaken(CatalogError, AlreadyExists):
    default_reason = "SKU_TAKEN"


class CategoryTaken(CatalogError, AlreadyExists):
    default_reason = "CATEGORY_TAKEN"


class EtagMismatch(CatalogError, Aborted):
    default_reason = "ETAG_MISMATCH"


class ConcurrentModification(CatalogError, Aborted):
    """Lost an optimistic-concurrency race too many times in a row; re-read and retry."""

    default_reason = "CONCURRENT_MODIFICATION"


class ProductArchived(CatalogError, FailedPrecondition):
    default_reason = "PRODUCT_ARCHIVED"


class StockLimitExceeded(CatalogError, FailedPrecondition):
    default_reason = "STOCK_LIMIT_EXCEEDED"


class InvalidRequest(CatalogError, InvalidArgument):
    default_reason = "INVALID_REQUEST"


class InvalidPageToken(CatalogError, InvalidArgument):
    default_reason = "INVALID_PAGE_TOKEN"


class ReservationNotFound(CatalogError, NotFound):
    default_reason = "RESERVATION_NOT_FOUND"


class ReservationMismatch(CatalogError, AlreadyExists):
    default_reason = "RESERVATION_MISMATCH"


class ReservationClosed(CatalogError, FailedPrecondition):
    default_reason = "RESERVATION_CLOSED"


class ReservationBusy(CatalogError, Aborted):
    """Another operation on the same reservation is half-way; retry shortly."""

    default_reason = "RESERVATION_IN_PROGRESS"


class ShortageKind(Enum):
    """Why one reservation line was refused (PreconditionFailure violation type)."""

    OUT_OF_STOCK = "OUT_OF_STOCK"
    NOT_FOUND = "NOT_FOUND"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    kind: ShortageKind
    description: str


class StockUnavailable(CatalogError, FailedPrecondition):
    """Some lines cannot be reserved; nothing was reserved. ``shortages`` names them."""

    default_reason = "STOCK_UNAVAILABLE"

    def __init__(self, shortages: Sequence[Shortage]) -> None:
        self.shortages = tuple(shortages)
        super().__init__(
            "stock is unavailable for " + ", ".join(s.sku for s in self.shortages),
            metadata={
                "skus": ",".join(s.sku for s in self.shortages),
                "types": ",".join(s.kind.value for s in self.shortages),
            },
            precondition_violations=[
                PreconditionViolation(s.kind.value, s.sku, s.description) for s in self.shortages
            ],
        )


def invalid(message: str, field: str, description: str) -> InvalidRequest:
    """Bad input in one field: INVALID_ARGUMENT with its BadRequest field violation."""
    return InvalidRequest(message, field_violations=[FieldViolation(field, description)])


def product_not_found(sku: str) -> ProductNotFound:
    return ProductNotFound(f"product {sku!r} does not exist", metadata={"sku": sku})


def keeps_changing(sku: str) -> ConcurrentModification:
    return ConcurrentModification(f"product {sku!r} keeps changing; retry", metadata={"sku": sku})


def reservation_not_found(order_id: str) -> ReservationNotFound:
    return ReservationNotFound(
        f"no reservation for order {order_id}", metadata={"order_id": order_id}
    )


def reservation_closed(order_id: str) -> ReservationClosed:
    return ReservationClosed(
        f"the reservation of order {order_id} was released or expired",
        metadata={"order_id": order_id},
    )


def reservation_mismatch(order_id: str) -> ReservationMismatch:
    return ReservationMismatch(
        f"order {order_id} already has a reservation with other lines",
        metadata={"order_id": order_id},
    )


def reservation_busy(order_id: str) -> ReservationBusy:
    return ReservationBusy(
        f"the reservation of order {order_id} is being changed; retry",
        metadata={"order_id": order_id},
    )
