"""Domain error types shared by every service, free of gRPC.

Each service defines one root (``class CatalogError(MercatoError): domain =
"catalog.mercato"``) and raises subclasses that also inherit one of the kinds
below (``class ProductNotFound(CatalogError, NotFound)``). The server
interceptor maps a kind to its gRPC status code and adds exactly one
``google.rpc.ErrorInfo`` (``reason``, ``domain``, ``metadata``) and, for bad
input, ``google.rpc.BadRequest`` field violations. Clients turn a status back
into the same kinds (:func:`mercato_common.client.error_from_rpc`). An error may also carry
``google.rpc.PreconditionFailure`` violations (``precondition_violations``) and a
``google.rpc.RetryInfo`` delay (``retry_after``, seconds).

An error that always says the same declares its ``default_message`` instead of an ``__init__``.
The errors every service raises alike (:class:`InvalidRequest`, :class:`InvalidPageToken`,
:class:`ScopeMissing`, :class:`StoreUnavailable`, and :class:`StockUnavailable`, which the
orders service relays from the catalog) are declared here once; a service adds only its
root (``class InvalidPageToken(OrdersError, errors.InvalidPageToken)``), which gives the domain.

Messages are shown to callers: never put secrets or internals in them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any, ClassVar, Self

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "ErrorKind",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "InvalidPageToken",
    "InvalidRequest",
    "MercatoError",
    "NotFound",
    "PermissionDenied",
    "PreconditionViolation",
    "ResourceExhausted",
    "ScopeMissing",
    "Shortage",
    "ShortageKind",
    "StockUnavailable",
    "StoreUnavailable",
    "Unauthenticated",
    "Unavailable",
    "is_valid_reason",
]

_REASON = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")


def is_valid_reason(reason: str) -> bool:
    """Whether ``reason`` may be an ErrorInfo reason: UPPER_SNAKE_CASE (AIP-193)."""
    return _REASON.match(reason) is not None


class ErrorKind(Enum):
    """What went wrong, in the terms of google.rpc.Code (the wire mapping lives in grpc code)."""

    INVALID_ARGUMENT = "INVALID_ARGUMENT"
    NOT_FOUND = "NOT_FOUND"
    ALREADY_EXISTS = "ALREADY_EXISTS"
    FAILED_PRECONDITION = "FAILED_PRECONDITION"
    ABORTED = "ABORTED"
    PERMISSION_DENIED = "PERMISSION_DENIED"
    UNAUTHENTICATED = "UNAUTHENTICATED"
    RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
    UNAVAILABLE = "UNAVAILABLE"
    DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"
    INTERNAL = "INTERNAL"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad input field: a dotted path (``lines[0].quantity``) and why it is bad."""

    field: str
    description: str


@dataclass(frozen=True, slots=True)
class PreconditionViolation:
    """One failed precondition (``google.rpc.PreconditionFailure.Violation``).

    ``type`` is a service-specific kind (``OUT_OF_STOCK``), ``subject`` what failed (a SKU).
    """

    type: str
    subject: str
    description: str


class MercatoError(Exception):
    """Root of every domain error. Keyword-only details keep call sites readable."""

    kind: ClassVar[ErrorKind] = ErrorKind.INTERNAL
    # ErrorInfo domain, "<service>.mercato"; a service's root error overrides it.
    domain: ClassVar[str] = "mercato"
    # Default ErrorInfo reason of the class; an instance may pass its own.
    default_reason: ClassVar[str] = "INTERNAL"
    # Message of an instance made without one; a class that always says the same sets it.
    default_message: ClassVar[str] = ""

    def __init__(
        self,
        message: str = "",
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        domain: str | None = None,
        precondition_violations: Sequence[PreconditionViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        message = message or self.default_message
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        if not is_valid_reason(self.reason):
            raise ValueError(f"error reason must be UPPER_SNAKE_CASE, got {self.reason!r}")
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.error_domain = domain or self.domain
        self.precondition_violations: tuple[PreconditionViolation, ...] = tuple(
            precondition_violations
        )
        # Seconds the caller should wait before retrying (google.rpc.RetryInfo), if known.
        self.retry_after = retry_after

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A kind's default reason is its name (NOT_FOUND), unless the class says otherwise.
        if "kind" in cls.__dict__ and "default_reason" not in cls.__dict__:
            cls.default_reason = cls.kind.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(MercatoError):
    """The request is wrong whatever the state: a bad field (say which in ``field_violations``)."""

    kind = ErrorKind.INVALID_ARGUMENT


class NotFound(MercatoError):
    """No such resource, or none the caller may see (never a hint that it exists)."""

    kind = ErrorKind.NOT_FOUND


class AlreadyExists(MercatoError):
    kind = ErrorKind.ALREADY_EXISTS


class FailedPrecondition(MercatoError):
    """The state does not allow it (an order already paid, stock too low); retrying the same
    request will not help until the state changes."""

    kind = ErrorKind.FAILED_PRECONDITION


class Aborted(MercatoError):
    """A concurrency conflict (stale etag, lost race): the caller may retry from a fresh read."""

    kind = ErrorKind.ABORTED


class PermissionDenied(MercatoError):
    kind = ErrorKind.PERMISSION_DENIED


class Unauthenticated(MercatoError):
    """No valid credentials: a missing, malformed or expired token, wrong client secret."""

    kind = ErrorKind.UNAUTHENTICATED


class ResourceExhausted(MercatoError):
    kind = ErrorKind.RESOURCE_EXHAUSTED


class Unavailable(MercatoError):
    """A dependency cannot be reached right now; the same request may succeed later."""

    kind = ErrorKind.UNAVAILABLE


class DeadlineExceeded(MercatoError):
    kind = ErrorKind.DEADLINE_EXCEEDED


# The errors every service raises alike; a service's own class adds its root (the domain).


class InvalidRequest(InvalidArgument):
    """Bad input: a message and a ``google.rpc.BadRequest`` violation for each bad field."""

    default_reason = "INVALID_REQUEST"

    def __init__(self, message: str, violations: Sequence[FieldViolation] = ()) -> None:
        super().__init__(message, field_violations=violations)

    @classmethod
    def for_field(cls, field: str) -> Callable[[str], Self]:
        """Makes this error about one bad ``field`` from why it is bad (also the message): the
        ``invalid`` factory of :func:`mercato_common.paging.page_size` and the like."""
        return lambda description: cls(description, [FieldViolation(field, description)])


class InvalidPageToken(InvalidArgument):
    """A page token that is malformed or not one of this listing and its filters (AIP-158)."""

    default_reason = "INVALID_PAGE_TOKEN"
    default_message = "the page token is invalid"
    # Description of the ``page_token`` field violation; the message itself when empty.
    violation: ClassVar[str] = ""

    def __init__(self, message: str = "") -> None:
        message = message or self.default_message
        super().__init__(
            message, field_violations=[FieldViolation("page_token", self.violation or message)]
        )


class ScopeMissing(PermissionDenied):
    """The caller's token lacks the scope an action needs (``missing_scopes`` names it)."""

    default_reason = "SCOPE_MISSING"

    def __init__(self, scope: str, what: str) -> None:
        super().__init__(f"{what} needs the {scope} scope", metadata={"missing_scopes": scope})


class StoreUnavailable(Unavailable):
    """The service's own database cannot be reached; the caller may retry.

    A service names its reason (``ORDERS_UNAVAILABLE``) and message.
    """


class ShortageKind(Enum):
    """Why one order line cannot be reserved: the type of its PreconditionFailure violation.

    The catalog refuses with these types and the orders service reads them back from the
    catalog's status, so both name them from here.
    """

    OUT_OF_STOCK = "OUT_OF_STOCK"
    NOT_FOUND = "NOT_FOUND"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    kind: ShortageKind
    description: str


class StockUnavailable(FailedPrecondition):
    """Some lines cannot be reserved, so nothing was; ``shortages`` names them.

    Its status carries one ``google.rpc.PreconditionFailure`` violation per refused line and the
    SKUs and types in the ErrorInfo metadata.
    """

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


KIND_CLASSES: Mapping[ErrorKind, type[MercatoError]] = {
    cls.kind: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        Aborted,
        PermissionDenied,
        Unauthenticated,
        ResourceExhausted,
        Unavailable,
        DeadlineExceeded,
        MercatoError,
    )
}
