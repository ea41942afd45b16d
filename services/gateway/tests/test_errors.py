"""gRPC status -> HTTP status and the JSON error body; the RFC 6749 form."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mercato_gateway.errors import HTTP_STATUS, ApiError, from_rpc_error

EXPECTED = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
    "INTERNAL": 500,
    "UNKNOWN": 500,
    "DATA_LOSS": 500,
    "UNIMPLEMENTED": 501,
}


def rpc_error(
    code: grpc.StatusCode, message: str, *details: object, trailer: bool = True
) -> grpc.aio.AioRpcError:
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)  # type: ignore[arg-type]
        packed.append(any_detail)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)
    trailing = (
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString()))
        if trailer
        else grpc.aio.Metadata()
    )
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details=message)


@pytest.mark.parametrize(("name", "status"), sorted(EXPECTED.items()))
def test_status_mapping(name: str, status: int) -> None:
    code = getattr(grpc.StatusCode, name)
    assert HTTP_STATUS[code] == status
    error = from_rpc_error(
        rpc_error(code, "details", error_details_pb2.ErrorInfo(reason="WHY", domain="x.mercato")),
        service="catalog",
    )
    assert error.http_status == status
    assert error.status == name


def test_details_become_the_json_body() -> None:
    error = from_rpc_error(
        rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "the request is invalid",
            error_details_pb2.ErrorInfo(
                reason="INVALID_REQUEST", domain="orders.mercato", metadata={"a": "b"}
            ),
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(
                        field="order.lines[0].unit_price", description="bad"
                    )
                ]
            ),
        ),
        service="orders",
        field_path=lambda path: path.replace("unit_price", "unitPrice"),
    )
    body = error.body("req-1")["error"]
    assert body == {
        "code": 400,
        "status": "INVALID_ARGUMENT",
        "message": "the request is invalid",
        "reason": "INVALID_REQUEST",
        "domain": "orders.mercato",
        "metadata": {"a": "b"},
        "fieldViolations": [{"field": "order.lines[0].unitPrice", "description": "bad"}],
        "requestId": "req-1",
    }


def test_retry_info_and_preconditions() -> None:
    throttled = from_rpc_error(
        rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "too many failed logins",
            error_details_pb2.ErrorInfo(
                reason="LOGIN_THROTTLED",
                domain="auth.mercato",
                metadata={"retry_after_seconds": "30"},
            ),
            error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=29, nanos=1)),
        ),
        service="auth",
    )
    assert throttled.http_status == 429
    assert throttled.retry_after == 30
    assert throttled.all_headers()["retry-after"] == "30"
    metadata_only = from_rpc_error(
        rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            error_details_pb2.ErrorInfo(reason="X", metadata={"retry_after_seconds": "7"}),
        ),
        service="auth",
    )
    assert metadata_only.retry_after == 7
    stock = from_rpc_error(
        rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "out of stock",
            error_details_pb2.ErrorInfo(reason="STOCK_UNAVAILABLE", domain="catalog.mercato"),
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(
                        type="OUT_OF_STOCK", subject="SKU-1", description="2 left"
                    )
                ]
            ),
        ),
        service="catalog",
    )
    assert stock.http_status == 409
    assert stock.body()["error"]["preconditionViolations"] == [
        {"type": "OUT_OF_STOCK", "subject": "SKU-1", "description": "2 left"}
    ]


def test_internals_never_reach_the_client() -> None:
    internal = from_rpc_error(
        rpc_error(grpc.StatusCode.INTERNAL, "Traceback: secret at /srv/x.py"), service="orders"
    )
    assert internal.message == "internal error"
    transport = from_rpc_error(
        rpc_error(
            grpc.StatusCode.UNAVAILABLE,
            "failed to connect to all addresses; last error: 10.0.0.7:50063",
            trailer=False,
        ),
        service="orders",
    )
    assert transport.http_status == 503
    assert "10.0.0.7" not in transport.message
    assert transport.retry_after == 1
    timeout = from_rpc_error(
        rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", trailer=False),
        service="orders",
    )
    assert timeout.http_status == 504
    assert timeout.domain == "gateway.mercato"


def test_oauth_form() -> None:
    grant = ApiError(400, "INVALID_ARGUMENT", 'refresh token "x" is unknown', "INVALID_GRANT")
    assert grant.oauth_body() == {
        "error": "invalid_grant",
        "error_description": "refresh token x is unknown",
    }
    client = ApiError(401, "UNAUTHENTICATED", "client authentication failed", "INVALID_CLIENT")
    assert client.oauth_body()["error"] == "invalid_client"
    invalid = ApiError(
        400,
        "INVALID_ARGUMENT",
        "the request is invalid",
        "INVALID_REQUEST",
        field_violations=[("grant_type", "value is required")],
    )
    assert invalid.oauth_body() == {
        "error": "invalid_request",
        "error_description": "grant_type: value is required",
    }
    down = ApiError(503, "UNAVAILABLE", "auth is down", "UNAVAILABLE")
    assert down.oauth_body()["error"] == "temporarily_unavailable"
    other = ApiError(400, "INVALID_ARGUMENT", "x", "PASSWORD_POLICY")
    assert other.oauth_body()["error"] == "invalid_request"
