"""Streaming RPCs get the checks unary ones get: the access option and the token before the first
message, the request rules (every streamed request as it arrives), domain errors raised while
streaming mapped to their status, and the caller's identity bound for the whole stream.

The contract is compiled here with grpcio-tools (a server-streaming and a bidirectional method,
with access options and protovalidate rules), served by the kit's GrpcServer.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from prometheus_client import CollectorRegistry

from mercato_common.errors import MercatoError, NotFound, Unauthenticated
from mercato_common.identity import Identity, require_identity
from mercato_common.server import GrpcServer
from mercato_common.settings import BaseServiceSettings
from mercato_devstack.testing import compile_contract

ROOT = Path(__file__).resolve().parents[3]
MISSING = "00000000-0000-4000-8000-00000000dead"
ORDER = "7d3c9a52-2a6b-4b8e-9a57-8f1d7f1b2c11"

CONTRACT = """syntax = "proto3";
package mercato.follow.v1;
import "buf/validate/validate.proto";
import "mercato/api/v1/access.proto";
message FollowRequest {
  string order_id = 1 [(buf.validate.field).string.uuid = true];
  int32 count = 2 [(buf.validate.field).int32 = {gte: 1, lte: 5}];
}
message Ping { string text = 1 [(buf.validate.field).string.max_len = 5]; }
message Tick { int32 n = 1; string subject = 2; }
service FollowService {
  rpc Follow(FollowRequest) returns (stream Tick) {
    option (mercato.api.v1.access) = { audience: AUDIENCE_SCOPED scopes: "orders:read" };
  }
  rpc Chat(stream Ping) returns (stream Tick) {
    option (mercato.api.v1.access) = { audience: AUDIENCE_AUTHENTICATED };
  }
}
"""


class FollowError(MercatoError):
    domain = "follow.mercato"


class OrderGone(FollowError, NotFound):
    default_reason = "ORDER_NOT_FOUND"


class Tokens:
    async def verify(self, token: str) -> Identity:
        scopes = {"reader": {"orders:read"}, "nobody": set()}.get(token)
        if scopes is None:
            raise Unauthenticated("the access token is invalid", reason="TOKEN_INVALID")
        return Identity(subject=f"user-{token}", scopes=frozenset(scopes))


def _protodeps() -> Path:
    """buf/validate/validate.proto and the other third-party imports (tools/protos.py)."""
    spec = importlib.util.spec_from_file_location("mercato_tools_protos", ROOT / "tools/protos.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    deps: Path = module.fetch_deps()
    return deps


@pytest.fixture(scope="module")
def contract(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, ModuleType]:
    out = tmp_path_factory.mktemp("follow_contract")
    return compile_contract(CONTRACT, "follow", out, includes=[_protodeps()])


@pytest.fixture
async def channel(contract: tuple[ModuleType, ModuleType]) -> AsyncIterator[grpc.aio.Channel]:
    pb2, pb2_grpc = contract

    class Follow(pb2_grpc.FollowServiceServicer):  # type: ignore[misc, name-defined]
        async def Follow(self, request: Any, context: Any) -> AsyncIterator[Any]:
            for n in range(1, request.count + 1):
                if request.order_id == MISSING and n == 2:
                    raise OrderGone(f"order {request.order_id} not found")
                # The caller's identity is bound for the whole stream.
                yield pb2.Tick(n=n, subject=require_identity().subject)

        async def Chat(self, requests: Any, context: Any) -> AsyncIterator[Any]:
            async for ping in requests:
                yield pb2.Tick(n=len(ping.text), subject=require_identity().subject)

    settings = BaseServiceSettings(service_name="follow", grpc_port=0, shutdown_drain_seconds=0)
    server = GrpcServer(
        settings,
        error_domain="follow.mercato",
        token_verifier=Tokens(),
        registry=CollectorRegistry(),
    )
    server.add_service(
        pb2_grpc.add_FollowServiceServicer_to_server, Follow(), "mercato.follow.v1.FollowService"
    )
    port = await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as opened:
        yield opened
    await server.stop()


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def _drain(call: Any, received: list[int]) -> None:
    """Read a response stream to its end, noting each tick as it comes."""
    async for tick in call:
        received.append(tick.n)


def _details(error: grpc.aio.AioRpcError) -> tuple[str, list[str]]:
    """The ErrorInfo reason and the fields a BadRequest names."""
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            reason, fields = "", []
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    reason = info.reason
                if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                    bad = error_details_pb2.BadRequest()
                    detail.Unpack(bad)
                    fields = [v.field for v in bad.field_violations]
            return reason, fields
    raise AssertionError("no google.rpc.Status in trailers")


async def test_server_stream_checks_access_rules_and_maps_errors(
    contract: tuple[ModuleType, ModuleType], channel: grpc.aio.Channel
) -> None:
    pb2, pb2_grpc = contract
    stub = pb2_grpc.FollowServiceStub(channel)

    ticks = [
        t
        async for t in stub.Follow(
            pb2.FollowRequest(order_id=ORDER, count=3), metadata=_auth("reader")
        )
    ]
    assert [(t.n, t.subject) for t in ticks] == [
        (1, "user-reader"),
        (2, "user-reader"),
        (3, "user-reader"),
    ]

    for metadata, code in (
        (_auth("nobody"), grpc.StatusCode.PERMISSION_DENIED),
        ((), grpc.StatusCode.UNAUTHENTICATED),
        (_auth("forged"), grpc.StatusCode.UNAUTHENTICATED),
    ):
        call = stub.Follow(pb2.FollowRequest(order_id=ORDER, count=3), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            _ = [t async for t in call]
        assert refused.value.code() == code

    call = stub.Follow(pb2.FollowRequest(order_id="not-a-uuid", count=9), metadata=_auth("reader"))
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        _ = [t async for t in call]
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(invalid.value) == ("INVALID_REQUEST", ["order_id", "count"])

    # A domain error raised while streaming: the ticks sent so far, then its status.
    received: list[int] = []
    call = stub.Follow(pb2.FollowRequest(order_id=MISSING, count=3), metadata=_auth("reader"))
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await _drain(call, received)
    assert received == [1]
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert _details(gone.value)[0] == "ORDER_NOT_FOUND"


async def test_client_stream_requests_are_validated_as_they_arrive(
    contract: tuple[ModuleType, ModuleType], channel: grpc.aio.Channel
) -> None:
    pb2, pb2_grpc = contract
    stub = pb2_grpc.FollowServiceStub(channel)

    async def pings(*texts: str) -> AsyncIterator[Any]:
        for text in texts:
            yield pb2.Ping(text=text)

    ticks = [t async for t in stub.Chat(pings("hi", "hello"), metadata=_auth("nobody"))]
    assert [(t.n, t.subject) for t in ticks] == [(2, "user-nobody"), (5, "user-nobody")]

    received: list[int] = []
    call = stub.Chat(pings("hi", "too long", "ok"), metadata=_auth("reader"))
    with pytest.raises(grpc.aio.AioRpcError) as invalid:
        await _drain(call, received)
    assert received == [2]
    assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert _details(invalid.value) == ("INVALID_REQUEST", ["text"])

    with pytest.raises(grpc.aio.AioRpcError) as anonymous:
        _ = [t async for t in stub.Chat(pings("hi"))]
    assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
