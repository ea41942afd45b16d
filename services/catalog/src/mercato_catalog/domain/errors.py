"""The catalog's errors: one root (:class:`CatalogError`, domain ``catalog.mercato``), one
subclass per reason, and the constructors of the ones raised in several places."""

from __future__ import annotations

from mercato_common import errors
from mercato_common.errors import FieldViolation, MercatoError, Shortage, ShortageKind

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

    domain = "catalog.mercato"


class ProductNotFound(CatalogError, errors.NotFound):
    default_reason = "PRODUCT_NOT_FOUND"


class CategoryMissing(CatalogError, errors.FailedPrecondition):
    """A write names a category that does not exist."""

    default_reason = "CATEGORY_NOT_FOUND"


class CategoryTooDeep(CatalogError, errors.FailedPrecondition):
    default_reason = "CATEGORY_TOO_DEEP"


class SkuTaken(CatalogError, errors.AlreadyExists):
    default_reason = "SKU_TAKEN"


class CategoryTaken(CatalogError, errors.AlreadyExists):
    default_reason = "CATEGORY_TAKEN"


class EtagMismatch(CatalogError, errors.Aborted):
    default_reason = "ETAG_MISMATCH"


class ConcurrentModification(CatalogError, errors.Aborted):
    """Lost an optimistic-concurrency race too many times in a row; re-read and retry."""

    default_reason = "CONCURRENT_MODIFICATION"


class ProductArchived(CatalogError, errors.FailedPrecondition):
    default_reason = "PRODUCT_ARCHIVED"


class StockLimitExceeded(CatalogError, errors.FailedPrecondition):
    default_reason = "STOCK_LIMIT_EXCEEDED"


class InvalidRequest(CatalogError, errors.InvalidArgument):
    default_reason = "INVALID_REQUEST"


class InvalidPageToken(CatalogError, errors.InvalidArgument):
    default_reason = "INVALID_PAGE_TOKEN"


class ReservationNotFound(CatalogError, errors.NotFound):
    default_reason = "RESERVATION_NOT_FOUND"


class ReservationMismatch(CatalogError, errors.AlreadyExists):
    default_reason = "RESERVATION_MISMATCH"


class ReservationClosed(CatalogError, errors.FailedPrecondition):
    default_reason = "RESERVATION_CLOSED"


class ReservationBusy(CatalogError, errors.Aborted):
    """Another operation on the same reservation is half-way; retry shortly."""

    default_reason = "RESERVATION_IN_PROGRESS"


class StockUnavailable(CatalogError, errors.StockUnavailable):
    """Some lines cannot be reserved; nothing was reserved. ``shortages`` names them."""


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
