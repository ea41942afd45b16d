"""Client channels: retry only idempotent methods, deadlines always, propagated deadlines."""

import json
import time
from collections.abc import AsyncIterator, Sequence

import grpc
import pytest
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry

from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato_common.client import create_channel, retry_service_config
from mercato_common.errors import NotFound, Unavailable
from mercato_common.identity import Identity
from mercato_common.interceptors import _incoming_deadline
from mercato_common.rpc_errors import map_rpc_errors
from mercato_common.server import GrpcServer
from mercato_common.settings import BaseServiceSettings

SERVICE = "mercato.catalog.v1.CatalogService"
caller_tracer = TracerProvider().get_tracer("test")


def test_retry_policy_covers_exactly_the_idempotent_methods() -> None:
    config = retry_service_config([SERVICE])
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    (method_config,) = config["methodConfig"]
    names = {entry["method"] for entry in method_config["name"]}
    assert {"GetProduct", "ListProducts", "ReserveStock", "ReleaseStock"} <= names
    assert not names & {"CreateProduct", "CreateCategory", "UpdateProduct", "AdjustStock"}
    assert method_config["retryPolicy"]["retryableStatusCodes"] == [
        "UNAVAILABLE",
        "RESOURCE_EXHAUSTED",
    ]
    json.dumps(config)  # a valid service config is plain JSON


class AnyToken:
    async def verify(self, token: str) -> Identity:
        return Identity(subject="svc", scopes=frozenset({"catalog:read", "catalog:write"}))


class Flaky(catalog_pb2_grpc.CatalogServiceServicer):
    """Fails the first ``failures`` calls of each method with UNAVAILABLE."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: dict[str, int] = {}
        self.time_remaining: list[float] = []
        self.metadata: list[Sequence[tuple[str, str]]] = []

    async def _maybe_fail(self, method: str, context: grpc.aio.ServicerContext) -> None:
        self.calls[method] = self.calls.get(method, 0) + 1
        self.time_remaining.append(context.time_remaining())
        self.metadata.append(context.invocation_metadata())
        if self.calls[method] <= self.failures:
            await context.abort(grpc.StatusCode.UNAVAILABLE, "try again")

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.GetProductResponse:
        await self._maybe_fail("GetProduct", context)
        if request.sku == "MISSING":
            raise NotFound("no such product")
        return catalog_pb2.GetProductResponse(product=catalog_pb2.Product(sku=request.sku))

    async def CreateCategory(
        self, request: catalog_pb2.CreateCategoryRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.CreateCategoryResponse:
        await self._maybe_fail("CreateCategory", context)
        return catalog_pb2.CreateCategoryResponse(category=request.category)


@pytest.fixture
async def flaky() -> AsyncIterator[tuple[Flaky, str]]:
    server = GrpcServer(
        BaseServiceSettings(service_name="catalog", grpc_port=0, shutdown_drain_seconds=0),
        error_domain="catalog.mercato",
        token_verifier=AnyToken(),
        registry=CollectorRegistry(),
    )
    servicer = Flaky(failures=2)
    server.add_service(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, servicer, SERVICE)
    port = await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop()


async def _token() -> list[tuple[str, str]]:
    return [("authorization", "Bearer service-token")]


async def test_idempotent_call_is_retried_and_non_idempotent_is_not(
    flaky: tuple[Flaky, str],
) -> None:
    servicer, target = flaky
    async with create_channel(target, services=[SERVICE], metadata=_token) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        with caller_tracer.start_as_current_span("caller") as caller:
            response = await stub.GetProduct(catalog_pb2.GetProductRequest(sku="TEAPOT-1"))
        assert response.product.sku == "TEAPOT-1"
        assert servicer.calls["GetProduct"] == 3
        category = catalog_pb2.Category(id="kitchen", display_name="Kitchen")
        with pytest.raises(Unavailable):
            async with map_rpc_errors():
                await stub.CreateCategory(catalog_pb2.CreateCategoryRequest(category=category))
        assert servicer.calls["CreateCategory"] == 1
    first_call = dict(servicer.metadata[0])
    assert first_call["authorization"] == "Bearer service-token"
    trace_id = format(caller.get_span_context().trace_id, "032x")
    assert first_call["traceparent"].split("-")[1] == trace_id


async def test_every_call_has_a_deadline_and_inherits_the_incoming_one(
    flaky: tuple[Flaky, str],
) -> None:
    servicer, target = flaky
    servicer.failures = 0
    async with create_channel(
        target, services=[SERVICE], metadata=_token, default_timeout=30
    ) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        await stub.GetProduct(catalog_pb2.GetProductRequest(sku="A1"))
        assert 25 < servicer.time_remaining[-1] <= 30.5
        # As if serving a call with 1.5 s left: the outgoing call gets no more.
        token = _incoming_deadline.set(time.monotonic() + 1.5)
        try:
            await stub.GetProduct(catalog_pb2.GetProductRequest(sku="A2"))
        finally:
            _incoming_deadline.reset(token)
        assert servicer.time_remaining[-1] <= 1.6


async def test_errors_map_back_to_domain_kinds(flaky: tuple[Flaky, str]) -> None:
    _, target = flaky
    async with create_channel(target, services=[SERVICE], metadata=_token) as channel:
        stub = catalog_pb2_grpc.CatalogServiceStub(channel)
        with pytest.raises(NotFound) as caught:
            async with map_rpc_errors():
                await stub.GetProduct(catalog_pb2.GetProductRequest(sku="MISSING"))
        assert caught.value.error_domain == "catalog.mercato"
