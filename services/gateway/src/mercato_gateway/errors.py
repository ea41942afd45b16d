"""One error shape for every failure, and the gRPC status -> HTTP status mapping.

Every error answer is ``application/json``::

    {"error": {"code": 404, "status": "NOT_FOUND", "message": "...", "reason": "PRODUCT_NOT_FOUND",
               "domain": "catalog.mercato", "metadata": {...},
               "fieldViolations": [{"field": "product.price", "description": "..."}],
               "preconditionViolations": [{"type": "OUT_OF_STOCK", "subject": "SKU-1", ...}],
               "requestId": "..."}}

except on the OAuth endpoints, which answer RFC 6749 section 5.2 ``{"error": "invalid_grant",
"error_description": "..."}``. Messages of server faults (INTERNAL, UNKNOWN, transport errors)
are replaced by generic ones: no internals reach a client.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc

from mercato_common.rpc_errors import rpc_error_details

__all__ = [
    "GATEWAY_DOMAIN",
    "HTTP_STATUS",
    "OAUTH_ERRORS",
    "ApiError",
    "from_rpc_error",
    "invalid_argument",
]

GATEWAY_DOMAIN = "gateway.mercato"

# gRPC code -> HTTP status. FAILED_PRECONDITION is 409: the request is well-formed but the
# resource's current state refuses it (out of stock, illegal state transition, payment
# declined); 400 stays for input the client must change.
HTTP_STATUS: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.FAILED_PRECONDITION: 409,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.DATA_LOSS: 500,
}
# Codes whose message may carry internals (stack traces, addresses): replaced.
_GENERIC_MESSAGES: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.INTERNAL: "internal error",
    grpc.StatusCode.UNKNOWN: "internal error",
    grpc.StatusCode.DATA_LOSS: "internal error",
    grpc.StatusCode.UNIMPLEMENTED: "not implemented",
    grpc.StatusCode.CANCELLED: "the request was cancelled",
}
# RFC 6749 section 5.2 and RFC 7009 section 2.2.1 error codes (ErrorInfo reasons upper-cased).
OAUTH_ERRORS = frozenset(
    {
        "invalid_request",
        "invalid_client",
        "invalid_grant",
        "unauthorized_client",
        "unsupported_grant_type",
        "invalid_scope",
        "unsupported_token_type",
    }
)


@dataclass
class ApiError(Exception):
    """An HTTP error answer (raised anywhere in request handling)."""

    http_status: int
    status: str
    message: str
    reason: str
    domain: str = GATEWAY_DOMAIN
    metadata: dict[str, str] = field(default_factory=dict)
    field_violations: list[tuple[str, str]] = field(default_factory=list)
    precondition_violations: list[dict[str, str]] = field(default_factory=list)
    retry_after: int | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @classmethod
    def bad_request(cls, message: str, *, reason: str = "INVALID_REQUEST") -> ApiError:
        return cls(400, "INVALID_ARGUMENT", message, reason)

    def body(self, request_id: str | None = None) -> dict[str, Any]:
        error: dict[str, Any] = {
            "code": self.http_status,
            "status": self.status,
            "message": self.message,
            "reason": self.reason,
            "domain": self.domain,
            "metadata": dict(self.metadata),
            "fieldViolations": [
                {"field": name, "description": description}
                for name, description in self.field_violations
            ],
        }
        if self.precondition_violations:
            error["preconditionViolations"] = list(self.precondition_violations)
        if self.retry_after is not None:
            error["retryAfterSeconds"] = self.retry_after
        if request_id:
            error["requestId"] = request_id
        return {"error": error}

    def oauth_body(self) -> dict[str, str]:
        """RFC 6749 section 5.2 form of this error."""
        code = self.reason.lower()
        if code not in OAUTH_ERRORS:
            if self.http_status == 401:
                code = "invalid_client"
            elif self.http_status >= 500 or self.http_status == 429:
                code = (
                    "temporarily_unavailable" if self.http_status in (429, 503) else "server_error"
                )
            else:
                code = "invalid_request"
        description = self.message
        if self.field_violations:
            description = "; ".join(f"{name}: {text}" for name, text in self.field_violations)
        # RFC 6749: error_description is %x20-21 / %x23-5B / %x5D-7E.
        description = "".join(ch for ch in description if ch not in '"\\' and " " <= ch <= "~")
        return {"error": code, "error_description": description}

    def all_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers.setdefault("retry-after", str(self.retry_after))
        return headers

    def render(self, request_id: str | None = None) -> bytes:
        return json.dumps(self.body(request_id), ensure_ascii=False, separators=(",", ":")).encode()


def invalid_argument(
    field_name: str, description: str, *, reason: str = "INVALID_REQUEST"
) -> ApiError:
    """A 400 naming the field at fault (JSON path, as the client wrote it)."""
    return ApiError(
        400,
        "INVALID_ARGUMENT",
        f"invalid {field_name}: {description}" if field_name else description,
        reason,
        field_violations=[(field_name, description)],
    )


def from_rpc_error(
    error: grpc.aio.AioRpcError,
    *,
    service: str,
    field_path: Any = None,
) -> ApiError:
    """The HTTP answer for a failed upstream call.

    ``field_path`` turns a server's proto field path into the client's JSON path.
    """
    code = error.code()
    http_status = HTTP_STATUS.get(code, 500)
    reason = code.name if code is not None else "UNKNOWN"
    domain = f"{service}.mercato"
    details = rpc_error_details(error)
    has_info = details.has_error_info
    if has_info:
        reason = details.reason or reason
        domain = details.domain or domain
    metadata = details.metadata
    violations = [
        (field_path(v.field) if field_path is not None and v.field else v.field, v.description)
        for v in details.field_violations
    ]
    preconditions = [
        {"type": v.type, "subject": v.subject, "description": v.description}
        for v in details.precondition_violations
    ]
    retry_after = None if details.retry_after is None else max(1, math.ceil(details.retry_after))
    if retry_after is None and "retry_after_seconds" in metadata:
        try:
            retry_after = max(1, math.ceil(float(metadata["retry_after_seconds"])))
        except ValueError:
            retry_after = None
    if code is not None and code in _GENERIC_MESSAGES:
        message = _GENERIC_MESSAGES[code]
        metadata, violations = {}, []
    elif code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED) and not has_info:
        # Raised by the channel, not the service: the details name addresses and sockets.
        message = (
            f"the {service} service is unavailable"
            if code == grpc.StatusCode.UNAVAILABLE
            else f"the {service} service did not answer in time"
        )
        domain = GATEWAY_DOMAIN
    else:
        message = error.details() or reason
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED and retry_after is None:
        retry_after = 1
    if code == grpc.StatusCode.UNAVAILABLE and retry_after is None:
        retry_after = 1
    headers: dict[str, str] = {}
    return ApiError(
        http_status,
        code.name if code is not None else "UNKNOWN",
        message,
        reason,
        domain,
        metadata,
        violations,
        preconditions,
        retry_after,
        headers,
    )
