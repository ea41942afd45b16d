"""The wire form of domain errors: ``google.rpc.Status`` with details, both ways.

Server side: :func:`to_rpc_status` turns a :class:`MercatoError` into a status
with exactly one ``ErrorInfo`` and, when fields are at fault, a ``BadRequest``; a
``PreconditionFailure`` when the error names failed preconditions and a ``RetryInfo``
when it says when to retry. :func:`to_grpc_status` is the same status ready for
``context.abort_with_status``.
Client side: :func:`error_from_rpc` turns a failed call back into the same
error kinds, keeping the ``grpc.aio.AioRpcError`` as ``__cause__``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar, cast

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import DecodeError, Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mercato_common.errors import (
    KIND_CLASSES,
    ErrorKind,
    FieldViolation,
    MercatoError,
    PreconditionViolation,
    is_valid_reason,
)

__all__ = [
    "STATUS_CODES",
    "RpcErrorDetails",
    "error_from_rpc",
    "map_rpc_errors",
    "rpc_error_details",
    "to_grpc_status",
    "to_rpc_status",
]

STATUS_CODES: dict[ErrorKind, grpc.StatusCode] = {
    kind: getattr(grpc.StatusCode, kind.value) for kind in ErrorKind
}
# Trailer that carries the serialized google.rpc.Status (the grpc-status convention).
_DETAILS_KEY = "grpc-status-details-bin"
_KINDS_BY_CODE = {code: kind for kind, code in STATUS_CODES.items()}

_M = TypeVar("_M", bound=Message)


def _packed(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _unpacked(detail: any_pb2.Any, message_type: type[_M]) -> _M:
    message = message_type()
    detail.Unpack(message)
    return message


def to_rpc_status(error: MercatoError) -> status_pb2.Status:
    """The ``google.rpc.Status`` a caller receives for ``error``."""
    code = STATUS_CODES[error.kind]
    info = error_details_pb2.ErrorInfo(
        reason=error.reason, domain=error.error_domain, metadata=error.metadata
    )
    details = [_packed(info)]
    if error.field_violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=violation.field, description=violation.description
                )
                for violation in error.field_violations
            ]
        )
        details.append(_packed(bad_request))
    if error.precondition_violations:
        failure = error_details_pb2.PreconditionFailure(
            violations=[
                error_details_pb2.PreconditionFailure.Violation(
                    type=violation.type,
                    subject=violation.subject,
                    description=violation.description,
                )
                for violation in error.precondition_violations
            ]
        )
        details.append(_packed(failure))
    if error.retry_after is not None:
        seconds = max(0.0, error.retry_after)
        whole = int(seconds)
        retry = error_details_pb2.RetryInfo(
            retry_delay=duration_pb2.Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))
        )
        details.append(_packed(retry))
    return status_pb2.Status(
        code=getattr(code_pb2, code.name), message=error.message, details=details
    )


class _RichStatus(grpc.Status):
    def __init__(
        self, code: grpc.StatusCode, details: str, trailing_metadata: tuple[tuple[str, bytes], ...]
    ) -> None:
        self.code = code
        self.details = details
        self.trailing_metadata = trailing_metadata


def to_grpc_status(error: MercatoError) -> grpc.Status:
    """:func:`to_rpc_status` as a ``grpc.Status`` (code, message, details trailer)."""
    status = to_rpc_status(error)
    return cast(
        grpc.Status,
        _RichStatus(
            STATUS_CODES[error.kind],
            status.message,
            ((_DETAILS_KEY, status.SerializeToString()),),
        ),
    )


@dataclass
class RpcErrorDetails:
    """What the ``google.rpc.Status`` details of a failed call say (empty when it has none)."""

    has_error_info: bool = False
    reason: str | None = None
    domain: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[FieldViolation] = field(default_factory=list)
    precondition_violations: list[PreconditionViolation] = field(default_factory=list)
    retry_after: float | None = None


def rpc_error_details(error: grpc.aio.AioRpcError) -> RpcErrorDetails:
    """The ErrorInfo, BadRequest, PreconditionFailure and RetryInfo of a failed call.

    A malformed details trailer counts as none: the status code still stands.
    """
    found = RpcErrorDetails()
    status = _status_of(error)
    if status is None:
        return found
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = _unpacked(detail, error_details_pb2.ErrorInfo)
            found.has_error_info = True
            found.reason, found.domain = info.reason or None, info.domain
            found.metadata = dict(info.metadata)
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = _unpacked(detail, error_details_pb2.BadRequest)
            found.field_violations.extend(
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            )
        elif detail.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR):
            failure = _unpacked(detail, error_details_pb2.PreconditionFailure)
            found.precondition_violations.extend(
                PreconditionViolation(v.type, v.subject, v.description) for v in failure.violations
            )
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = _unpacked(detail, error_details_pb2.RetryInfo)
            delay = retry.retry_delay
            found.retry_after = delay.seconds + delay.nanos / 1e9
    return found


def error_from_rpc(error: grpc.aio.AioRpcError) -> MercatoError:
    """The domain error a failed call stands for.

    Kind, reason, domain, metadata, field violations, precondition violations and retry delay.
    """
    kind = _KINDS_BY_CODE.get(error.code(), ErrorKind.INTERNAL)
    details = rpc_error_details(error)
    cls = KIND_CLASSES[kind]
    # A peer's reason that is not UPPER_SNAKE_CASE is dropped (the kind's default stands in);
    # every other detail is kept.
    reason = details.reason if details.reason and is_valid_reason(details.reason) else None
    result = cls(
        error.details() or error.code().name,
        reason=reason,
        metadata=details.metadata,
        field_violations=details.field_violations,
        domain=details.domain,
        precondition_violations=details.precondition_violations,
        retry_after=details.retry_after,
    )
    result.__cause__ = error
    return result


def _status_of(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    # grpc_status.rpc_status.from_call reads "grpc-status-details-bin" from the
    # trailers; an AioRpcError carries them already, so read them directly.
    for key, value in error.trailing_metadata() or ():
        if key == _DETAILS_KEY and isinstance(value, bytes):
            status = status_pb2.Status()
            try:
                status.MergeFromString(value)
            except DecodeError:
                return None
            return status
    return None


@asynccontextmanager
async def map_rpc_errors() -> AsyncIterator[None]:
    """Raise domain errors instead of ``AioRpcError`` inside the block."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise error_from_rpc(exc) from exc
