"""The orders service's errors: one root (:class:`OrdersError`, domain ``orders.mercato``).

Each class also inherits one kind of :mod:`mercato_common.errors`, which the server interceptor
maps to its gRPC code with one ``google.rpc.ErrorInfo`` (the reason below). The reasons are the
ones listed at the top of ``protos/mercato/orders/v1/orders.proto``. Messages are shown to
callers: no internals, no secrets.
"""

from __future__ import annotations

from collections.abc import Sequence

from mercato_common import errors
from mercato_common.errors import (
    FieldViolation,
    MercatoError,
    PreconditionViolation,
    Shortage,
    ShortageKind,
)
from mercato_orders.domain.states import OrderState

__all__ = [
    "AmountMismatch",
    "CatalogUnavailable",
    "IdempotencyKeyInUse",
    "IdempotencyKeyReused",
    "InvalidPageToken",
    "InvalidRequest",
    "InvalidStateTransition",
    "MixedCurrencies",
    "OrderNotFound",
    "OrdersError",
    "OrdersUnavailable",
    "PaymentDeclined",
    "PaymentEventInvalid",
    "PaymentEventsUnsupported",
    "PaymentUnavailable",
    "PermissionRequired",
    "ProductLimitExceeded",
    "ReservationExpired",
    "Shortage",
    "ShortageKind",
    "StockUnavailable",
    "TooManyOpenOrders",
    "TotalTooLarge",
]


class OrdersError(MercatoError):
    """Root of every error of the orders service."""

    domain = "orders.mercato"


class OrderNotFound(OrdersError, errors.NotFound):
    """No such order, or not one the caller may see (never a hint that it exists)."""

    default_reason = "ORDER_NOT_FOUND"

    def __init__(self, order_id: str) -> None:
        super().__init__(f"order {order_id} not found", metadata={"order_id": order_id})


class InvalidStateTransition(OrdersError, errors.FailedPrecondition):
    """The order's state does not allow the requested change; names the current state."""

    default_reason = "INVALID_STATE_TRANSITION"

    def __init__(self, current: OrderState, action: str) -> None:
        self.current = current
        super().__init__(
            f"cannot {action} an order in state {current.value}",
            metadata={"current_state": current.proto_name},
        )


class StockUnavailable(OrdersError, errors.StockUnavailable):
    """Catalog refused some lines; nothing was reserved. ``shortages`` names them."""


class MixedCurrencies(OrdersError, errors.FailedPrecondition):
    default_reason = "MIXED_CURRENCIES"

    def __init__(self, currencies: Sequence[str]) -> None:
        super().__init__(
            "an order has one currency; the products are priced in " + ", ".join(currencies),
            metadata={"currencies": ",".join(currencies)},
        )


class TotalTooLarge(OrdersError, errors.FailedPrecondition):
    default_reason = "TOTAL_TOO_LARGE"
    default_message = "the order total exceeds the largest representable amount"


class IdempotencyKeyReused(OrdersError, errors.AlreadyExists):
    """The key already placed (or is placing) an order from another request."""

    default_reason = "IDEMPOTENCY_KEY_REUSED"
    default_message = "this idempotency key was already used for a different request"


class IdempotencyKeyInUse(OrdersError, errors.Aborted):
    """A request with the same key is still being processed; retry shortly."""

    default_reason = "IDEMPOTENCY_KEY_IN_USE"
    default_message = "a request with this idempotency key is in progress; retry shortly"


class PaymentDeclined(OrdersError, errors.FailedPrecondition):
    default_reason = "PAYMENT_DECLINED"
    default_message = "the payment was declined"


class AmountMismatch(OrdersError, errors.FailedPrecondition):
    default_reason = "AMOUNT_MISMATCH"

    def __init__(self, expected_currency: str, expected_minor: int) -> None:
        super().__init__(
            "the amount does not equal the order's total",
            metadata={
                "expected_currency_code": expected_currency,
                "expected_amount_minor": str(expected_minor),
            },
        )


class ReservationExpired(OrdersError, errors.FailedPrecondition):
    """Payment found the stock reservation gone: the payment was voided, the order FAILED."""

    default_reason = "RESERVATION_EXPIRED"

    def __init__(self, current: OrderState) -> None:
        super().__init__(
            "the order's stock reservation expired; the payment was voided",
            metadata={"current_state": current.proto_name},
        )


class PaymentEventInvalid(OrdersError, errors.InvalidArgument):
    """A payment event whose signature does not verify (missing, wrong, too old) or whose body
    is not an event; nothing changed."""

    default_reason = "PAYMENT_EVENT_INVALID"

    def __init__(self, field: str, description: str) -> None:
        super().__init__(
            f"the payment event was refused: {description}",
            field_violations=[FieldViolation(field, description)],
        )


class PaymentEventsUnsupported(OrdersError, errors.FailedPrecondition):
    default_reason = "PAYMENT_EVENTS_UNSUPPORTED"
    default_message = "the configured payment provider sends no events"


class PaymentUnavailable(OrdersError, errors.Unavailable):
    default_reason = "PAYMENT_UNAVAILABLE"
    default_message = "the payment provider is unavailable; retry later"


class CatalogUnavailable(OrdersError, errors.Unavailable):
    default_reason = "CATALOG_UNAVAILABLE"
    default_message = "the catalog is unavailable; retry later"


class OrdersUnavailable(OrdersError, errors.StoreUnavailable):
    """The orders database could not be reached."""

    default_reason = "ORDERS_UNAVAILABLE"
    default_message = "the orders store is unavailable; retry later"


class InvalidRequest(OrdersError, errors.InvalidRequest):
    """Bad input; the field violations name each bad field."""


class InvalidPageToken(OrdersError, errors.InvalidPageToken):
    default_message = "the page token is invalid or belongs to other filters"
    violation = "invalid or for other filters"


class PermissionRequired(OrdersError, errors.ScopeMissing):
    """An action needs a scope the caller lacks (listing other users' orders: ``orders:admin``)."""


class TooManyOpenOrders(OrdersError, errors.ResourceExhausted):
    """The user has as many unpaid orders (and creates in progress) as one user may have."""

    default_reason = "TOO_MANY_OPEN_ORDERS"

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"at most {limit} unpaid orders per user: pay or cancel one first",
            metadata={"limit": str(limit)},
        )


class ProductLimitExceeded(OrdersError, errors.FailedPrecondition):
    """The order would make the user's unpaid orders hold more units of a product than one
    user may; one PreconditionFailure violation (type ``USER_LIMIT``) per product."""

    default_reason = "PRODUCT_LIMIT_EXCEEDED"

    def __init__(self, skus: Sequence[str], limit: int) -> None:
        self.skus = tuple(skus)
        super().__init__(
            f"at most {limit} units of one product in a user's unpaid orders: "
            + ", ".join(self.skus),
            metadata={"skus": ",".join(self.skus), "limit": str(limit)},
            precondition_violations=[
                PreconditionViolation(
                    "USER_LIMIT", sku, f"unpaid orders may hold at most {limit} units"
                )
                for sku in self.skus
            ],
        )
