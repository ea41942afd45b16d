"""CatalogClient: catalog statuses become the orders domain's terms."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from mercato.catalog.v1 import catalog_pb2
from mercato_orders.clients import (
    CatalogClient,
    ReservationClosedError,
    ReservationState,
    ServiceTokens,
    TokenGrant,
)
from mercato_orders.domain.errors import CatalogUnavailable, ShortageKind, StockUnavailable
from mercato_orders.domain.model import RequestedLine

ORDER = "5d4f5b5e-7a0b-4a35-9a43-1f1a2b3c4d5e"


def rpc_error(
    code: grpc.StatusCode, reason: str, *, violations: list[tuple[str, str]] = ()
) -> grpc.aio.AioRpcError:
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=reason)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain="catalog.mercato"))
    status.details.append(info)
    if violations:
        failure = any_pb2.Any()
        failure.Pack(
            error_details_pb2.PreconditionFailure(
                violations=[
                    error_details_pb2.PreconditionFailure.Violation(type=t, subject=s)
                    for t, s in violations
                ]
            )
        )
        status.details.append(failure)
    return grpc.aio.AioRpcError(
        code,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(("grpc-status-details-bin", status.SerializeToString())),
        details=reason,
    )


class FakeStub:
    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        async def call(request: Any, **_: Any) -> Any:
            self.calls.append(name)
            outcome = self.outcomes.pop(0)
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome

        return call


def client(*outcomes: Any) -> tuple[CatalogClient, FakeStub, ServiceTokens]:
    async def issue() -> TokenGrant:
        return TokenGrant("t", 900)

    tokens = ServiceTokens(issue)
    stub = FakeStub(*outcomes)
    return CatalogClient(stub, tokens, timeout=1.0), stub, tokens  # type: ignore[arg-type]


LINES = [RequestedLine("A-1", 1), RequestedLine("B-2", 2)]


async def test_refusal_names_the_catalogs_lines() -> None:
    catalog, _, _ = client(
        rpc_error(
            grpc.StatusCode.FAILED_PRECONDITION,
            "STOCK_UNAVAILABLE",
            violations=[("OUT_OF_STOCK", "A-1"), ("ARCHIVED", "B-2")],
        )
    )
    with pytest.raises(StockUnavailable) as caught:
        await catalog.reserve(ORDER, LINES)
    assert [(s.sku, s.kind) for s in caught.value.shortages] == [
        ("A-1", ShortageKind.OUT_OF_STOCK),
        ("B-2", ShortageKind.ARCHIVED),
    ]


async def test_closed_reservation_and_unknown_outcomes() -> None:
    catalog, _, _ = client(rpc_error(grpc.StatusCode.FAILED_PRECONDITION, "RESERVATION_CLOSED"))
    with pytest.raises(ReservationClosedError):
        await catalog.reserve(ORDER, LINES)
    for code in (
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    ):
        catalog, _, _ = client(rpc_error(code, "WHATEVER"))
        with pytest.raises(CatalogUnavailable):
            await catalog.reserve(ORDER, LINES)
    catalog, _, _ = client(rpc_error(grpc.StatusCode.NOT_FOUND, "RESERVATION_NOT_FOUND"))
    with pytest.raises(ReservationClosedError):
        await catalog.commit(ORDER)


async def test_busy_reservations_are_retried_and_refused_tokens_renewed() -> None:
    held = catalog_pb2.ReserveStockResponse(
        reservation=catalog_pb2.Reservation(
            order_id=ORDER, state=catalog_pb2.RESERVATION_STATE_HELD
        )
    )
    catalog, stub, tokens = client(
        rpc_error(grpc.StatusCode.ABORTED, "RESERVATION_IN_PROGRESS"),
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, "TOKEN_EXPIRED"),
        held,
    )
    await tokens.token()
    reservation = await catalog.reserve(ORDER, LINES)
    assert reservation.state is ReservationState.HELD
    assert stub.calls == ["ReserveStock"] * 3
    assert tokens.issued == 1  # invalidated; the next call through the channel gets a new one
    assert await tokens.token() == "t"
    assert tokens.issued == 2
