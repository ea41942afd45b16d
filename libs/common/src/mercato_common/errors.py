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

Messages are shown to callers: never put secrets or internals in them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import ClassVar

__all__ = [
    "Aborted",
    "AlreadyExists",
    "DeadlineExceeded",
    "ErrorKind",
    "FailedPrecondition",
    "FieldViolation",
    "InvalidArgument",
    "MercatoError",
    "NotFound",
    "PermissionDenied",
    "PreconditionViolation",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
]

_REASON = re.compile(r"^[A-Z][A-Z0-9_]*[A-Z0-9]$")


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

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        field_violations: Sequence[FieldViolation] = (),
        domain: str | None = None,
        precondition_violations: Sequence[PreconditionViolation] = (),
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        if not _REASON.match(self.reason):
            raise ValueError(f"error reason must be UPPER_SNAKE_CASE, got {self.reason!r}")
        self.metadata: dict[str, str] = dict(metadata or {})
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.error_domain = domain or self.domain
        self.precondition_violations: tuple[PreconditionViolation, ...] = tuple(
            precondition_violations
        )
        # Seconds the caller should wait before retrying (google.rpc.RetryInfo), if known.
        self.retry_after = retry_after

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, reason={self.reason!r})"


class InvalidArgument(MercatoError):
    kind = ErrorKind.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"


class NotFound(MercatoError):
    kind = ErrorKind.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(MercatoError):
    kind = ErrorKind.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class FailedPrecondition(MercatoError):
    kind = ErrorKind.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class Aborted(MercatoError):
    """A concurrency conflict (stale etag, lost race): the caller may retry from a fresh read."""

    kind = ErrorKind.ABORTED
    default_reason = "ABORTED"


class PermissionDenied(MercatoError):
    kind = ErrorKind.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class Unauthenticated(MercatoError):
    kind = ErrorKind.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class ResourceExhausted(MercatoError):
    kind = ErrorKind.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(MercatoError):
    kind = ErrorKind.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(MercatoError):
    kind = ErrorKind.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


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
