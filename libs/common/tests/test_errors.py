import grpc
import pytest
from google.rpc import error_details_pb2

from mercato_common import errors
from mercato_common.errors import (
    Aborted,
    ErrorKind,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MercatoError,
    NotFound,
    PreconditionViolation,
    ResourceExhausted,
)
from mercato_common.rpc_errors import error_from_rpc, to_grpc_status, to_rpc_status


class CatalogError(MercatoError):
    domain = "catalog.mercato"


class ProductNotFound(CatalogError, NotFound):
    default_reason = "PRODUCT_NOT_FOUND"


def _as_rpc_error(error: MercatoError) -> grpc.aio.AioRpcError:
    status = to_rpc_status(error)
    code = next(c for c in grpc.StatusCode if c.value[0] == status.code)
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=status.message,
    )


def test_status_has_exactly_one_error_info_with_service_domain() -> None:
    status = to_rpc_status(ProductNotFound("product ABC-1 not found", metadata={"sku": "ABC-1"}))
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    infos = [d for d in status.details if d.Is(error_details_pb2.ErrorInfo.DESCRIPTOR)]
    assert len(infos) == 1
    info = error_details_pb2.ErrorInfo()
    infos[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "PRODUCT_NOT_FOUND",
        "catalog.mercato",
        {"sku": "ABC-1"},
    )


def test_bad_request_names_the_fields() -> None:
    error = InvalidArgument(
        "bad order",
        field_violations=[FieldViolation("lines[0].quantity", "must be greater than 0")],
    )
    status = to_rpc_status(error)
    bad = error_details_pb2.BadRequest()
    assert any(d.Unpack(bad) for d in status.details if d.Is(bad.DESCRIPTOR))
    assert bad.field_violations[0].field == "lines[0].quantity"


def test_round_trip_keeps_kind_reason_domain_and_violations() -> None:
    sent = InvalidArgument(
        "bad", reason="SKU_MALFORMED", field_violations=[FieldViolation("sku", "too long")]
    )
    received = error_from_rpc(_as_rpc_error(sent))
    assert isinstance(received, InvalidArgument)
    assert received.reason == "SKU_MALFORMED"
    assert received.field_violations == (FieldViolation("sku", "too long"),)
    assert isinstance(received.__cause__, grpc.aio.AioRpcError)
    conflict = error_from_rpc(_as_rpc_error(Aborted("stale etag", reason="ETAG_MISMATCH")))
    assert isinstance(conflict, Aborted)


def test_a_status_without_details_still_maps_to_its_kind() -> None:
    bare = grpc.aio.AioRpcError(
        grpc.StatusCode.NOT_FOUND, grpc.aio.Metadata(), grpc.aio.Metadata(), details="gone"
    )
    error = error_from_rpc(bare)
    assert isinstance(error, NotFound)
    assert error.message == "gone"


def test_a_peers_malformed_reason_is_dropped_and_its_field_violations_kept() -> None:
    status = to_rpc_status(
        InvalidArgument("bad", field_violations=[FieldViolation("sku", "too long")])
    )
    info = error_details_pb2.ErrorInfo(reason="not-a-reason", domain="peer.example")
    for detail in status.details:
        if detail.Is(info.DESCRIPTOR):
            detail.Pack(info)
    received = error_from_rpc(
        grpc.aio.AioRpcError(
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.aio.Metadata(),
            grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
            details=status.message,
        )
    )
    assert isinstance(received, InvalidArgument)
    assert received.reason == "INVALID_ARGUMENT"
    assert received.error_domain == "peer.example"
    assert received.field_violations == (FieldViolation("sku", "too long"),)


def test_reason_must_be_upper_snake_case() -> None:
    with pytest.raises(ValueError, match="UPPER_SNAKE_CASE"):
        NotFound("x", reason="not-found")


def test_precondition_failure_lists_the_violations_and_round_trips() -> None:
    sent = FailedPrecondition(
        "stock is unavailable",
        reason="STOCK_UNAVAILABLE",
        precondition_violations=[
            PreconditionViolation("OUT_OF_STOCK", "A-1", "1 available"),
            PreconditionViolation("ARCHIVED", "B-2", "archived"),
        ],
    )
    status = to_rpc_status(sent)
    failures = [d for d in status.details if d.Is(error_details_pb2.PreconditionFailure.DESCRIPTOR)]
    assert len(failures) == 1
    failure = error_details_pb2.PreconditionFailure()
    failures[0].Unpack(failure)
    assert [(v.type, v.subject, v.description) for v in failure.violations] == [
        ("OUT_OF_STOCK", "A-1", "1 available"),
        ("ARCHIVED", "B-2", "archived"),
    ]
    assert not any(d.Is(error_details_pb2.RetryInfo.DESCRIPTOR) for d in status.details)
    received = error_from_rpc(_as_rpc_error(sent))
    assert isinstance(received, FailedPrecondition)
    assert received.precondition_violations == sent.precondition_violations
    assert received.retry_after is None


def test_retry_info_carries_the_delay_and_round_trips() -> None:
    sent = ResourceExhausted("slow down", reason="LOGIN_THROTTLED", retry_after=2.5)
    status = to_rpc_status(sent)
    retry = error_details_pb2.RetryInfo()
    assert any(d.Unpack(retry) for d in status.details if d.Is(retry.DESCRIPTOR))
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (2, 500_000_000)
    received = error_from_rpc(_as_rpc_error(sent))
    assert isinstance(received, ResourceExhausted)
    assert received.retry_after == 2.5
    assert received.precondition_violations == ()


def test_plain_errors_carry_no_extra_details() -> None:
    error = NotFound("gone")
    assert (error.precondition_violations, error.retry_after) == ((), None)
    status = to_rpc_status(error)
    assert len(status.details) == 1  # the ErrorInfo only


def test_grpc_status_puts_the_status_in_the_details_trailer() -> None:
    error = ResourceExhausted("slow down", retry_after=30)
    status = to_grpc_status(error)
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.details == "slow down"
    ((key, value),) = status.trailing_metadata
    assert key == "grpc-status-details-bin"
    assert value == to_rpc_status(error).SerializeToString()


class OrdersError(MercatoError):
    domain = "orders.mercato"


class OrdersPageToken(OrdersError, errors.InvalidPageToken):
    default_message = "the page token is invalid or belongs to other filters"
    violation = "invalid or for other filters"


def test_shared_errors_take_the_domain_of_the_service_root() -> None:
    token = OrdersPageToken()
    assert (token.kind, token.reason, token.error_domain) == (
        ErrorKind.INVALID_ARGUMENT,
        "INVALID_PAGE_TOKEN",
        "orders.mercato",
    )
    assert token.message == "the page token is invalid or belongs to other filters"
    assert token.field_violations == (FieldViolation("page_token", "invalid or for other filters"),)
    # Without a violation text of its own, the message describes the field.
    plain = errors.InvalidPageToken("the filters changed")
    assert plain.field_violations == (FieldViolation("page_token", "the filters changed"),)

    class BadInput(OrdersError, errors.InvalidRequest):
        pass

    bad = BadInput("bad lines", [FieldViolation("lines", "1-100 lines")])
    assert (bad.reason, bad.error_domain, bad.field_violations) == (
        "INVALID_REQUEST",
        "orders.mercato",
        (FieldViolation("lines", "1-100 lines"),),
    )

    class NotAdmin(OrdersError, errors.ScopeMissing):
        pass

    denied = NotAdmin("orders:admin", "listing other users' orders")
    assert (denied.kind, denied.reason, denied.metadata) == (
        ErrorKind.PERMISSION_DENIED,
        "SCOPE_MISSING",
        {"missing_scopes": "orders:admin"},
    )
    assert denied.message == "listing other users' orders needs the orders:admin scope"


def test_default_message_serves_when_none_is_given() -> None:
    class Down(OrdersError, errors.StoreUnavailable):
        default_reason = "ORDERS_UNAVAILABLE"
        default_message = "the orders store is unavailable; retry later"

    assert Down().message == "the orders store is unavailable; retry later"
    assert Down("the pool is exhausted").message == "the pool is exhausted"
    assert Down().kind is ErrorKind.UNAVAILABLE
    assert NotFound().message == ""  # a kind has no default message of its own
