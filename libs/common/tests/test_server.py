"""A test server built only from libs/common, serving the catalog contract on loopback."""

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from mercato.catalog.v1 import catalog_pb2, catalog_pb2_grpc
from mercato_common.errors import InvalidArgument, MercatoError, NotFound, Unauthenticated
from mercato_common.identity import Identity, current_identity
from mercato_common.server import GrpcServer
from mercato_common.settings import BaseServiceSettings

SERVICE = "mercato.catalog.v1.CatalogService"


class CatalogError(MercatoError):
    domain = "catalog.mercato"


class ProductNotFound(CatalogError, NotFound):
    default_reason = "PRODUCT_NOT_FOUND"


class Tokens:
    """Maps opaque test tokens to identities; signature checks are tested in test_identity."""

    async def verify(self, token: str) -> Identity:
        scopes = {"reader": {"catalog:read"}, "nobody": set()}.get(token)
        if scopes is None:
            raise Unauthenticated("the access token is invalid", reason="TOKEN_INVALID")
        return Identity(subject=f"user-{token}", scopes=frozenset(scopes))


class Catalog(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self) -> None:
        self.slow_started = asyncio.Event()
        self.seen_subjects: list[str] = []

    async def GetProduct(
        self, request: catalog_pb2.GetProductRequest, context: grpc.aio.ServicerContext
    ) -> catalog_pb2.GetProductResponse:
        identity = current_identity()
        self.seen_subjects.append(identity.subject if identity else "")
        if request.sku == "MISSING":
            raise ProductNotFound(f"product {request.sku} not found", metadata={"sku": request.sku})
        if request.sku == "BOOM":
            raise RuntimeError("connection to mongodb://admin:hunter2@db failed")
        if request.sku == "SLOW":
            self.slow_started.set()
            await asyncio.sleep(0.5)
        return catalog_pb2.GetProductResponse(
            product=catalog_pb2.Product(sku=request.sku, name="Teapot")
        )


Served = tuple[GrpcServer, Catalog, grpc.aio.Channel]


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    settings = BaseServiceSettings(
        service_name="catalog",
        grpc_port=0,
        shutdown_drain_seconds=0.2,
        shutdown_grace_seconds=2.0,
        grpc_reflection=True,
    )
    server = GrpcServer(
        settings,
        error_domain="catalog.mercato",
        token_verifier=Tokens(),
        registry=CollectorRegistry(),
    )
    catalog = Catalog()
    server.add_service(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, catalog, SERVICE)
    port = await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield server, catalog, channel
    finally:
        await channel.close()
        await server.stop()


def _auth(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def _status(error: grpc.aio.AioRpcError) -> status_pb2.Status:
    for key, value in error.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    raise AssertionError("no google.rpc.Status in trailers")


async def _get(channel: grpc.aio.Channel, sku: str, token: str = "reader") -> str:
    stub = catalog_pb2_grpc.CatalogServiceStub(channel)
    response = await stub.GetProduct(
        catalog_pb2.GetProductRequest(sku=sku), metadata=_auth(token), timeout=5
    )
    return response.product.name


async def test_answers_health_for_the_server_and_each_service(served: Served) -> None:
    _, _, channel = served
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", SERVICE):
        response = await health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5)
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="nope"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reflection_lists_the_services(served: Served) -> None:
    _, _, channel = served
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    names = set()
    async for response in stub.ServerReflectionInfo(iter([request]), timeout=5):
        names |= {s.name for s in response.list_services_response.service}
    assert {SERVICE, "grpc.health.v1.Health"} <= names


async def test_reflection_is_off_unless_enabled() -> None:
    server = GrpcServer(
        BaseServiceSettings(service_name="catalog", grpc_port=0, shutdown_drain_seconds=0),
        error_domain="catalog.mercato",
        token_verifier=Tokens(),
        registry=CollectorRegistry(),
    )
    server.add_service(catalog_pb2_grpc.add_CatalogServiceServicer_to_server, Catalog(), SERVICE)
    port = await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = reflection_pb2_grpc.ServerReflectionStub(channel)
            # No request is written: the server refuses the method from its headers alone, and a
            # write racing that refusal could end the call as INTERNAL on the client's side.
            call = stub.ServerReflectionInfo(timeout=5)
            assert await call.code() == grpc.StatusCode.UNIMPLEMENTED
            assert await _get(channel, "TEAPOT-1") == "Teapot"  # the service itself serves
    finally:
        await server.stop()


async def test_invalid_request_is_invalid_argument_naming_the_field(served: Served) -> None:
    _, catalog, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(channel, "not a sku!")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = _status(caught.value).details
    bad = error_details_pb2.BadRequest()
    assert [d.Unpack(bad) for d in details if d.Is(bad.DESCRIPTOR)] == [True]
    assert [v.field for v in bad.field_violations] == ["sku"]
    assert catalog.seen_subjects == []  # the servicer never ran


async def test_domain_error_becomes_its_status_with_error_info(served: Served) -> None:
    _, _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(channel, "MISSING")
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    info = error_details_pb2.ErrorInfo()
    infos = [d for d in _status(caught.value).details if d.Is(info.DESCRIPTOR)]
    assert len(infos) == 1
    infos[0].Unpack(info)
    assert (info.reason, info.domain, info.metadata["sku"]) == (
        "PRODUCT_NOT_FOUND",
        "catalog.mercato",
        "MISSING",
    )


async def test_unexpected_error_is_internal_without_internals(served: Served) -> None:
    _, _, channel = served
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(channel, "BOOM")
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    assert "hunter2" not in str(caught.value)


async def test_access_option_is_enforced(served: Served) -> None:
    _, catalog, channel = served
    assert await _get(channel, "TEAPOT-1", token="reader") == "Teapot"
    assert catalog.seen_subjects == ["user-reader"]
    stub = catalog_pb2_grpc.CatalogServiceStub(channel)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetProduct(catalog_pb2.GetProductRequest(sku="TEAPOT-1"), timeout=5)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(channel, "TEAPOT-1", token="nobody")
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(channel, "TEAPOT-1", token="forged")
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_graceful_shutdown_drains_in_flight_calls_and_reports_not_serving(
    served: Served,
) -> None:
    server, catalog, channel = served
    in_flight = asyncio.create_task(_get(channel, "SLOW"))
    await asyncio.wait_for(catalog.slow_started.wait(), 5)
    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.05)  # inside the drain pause: health already says NOT_SERVING
    health = health_pb2_grpc.HealthStub(channel)
    response = await health.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=5)
    assert response.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert await asyncio.wait_for(in_flight, 5) == "Teapot"
    await asyncio.wait_for(stopping, 5)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _get(channel, "TEAPOT-1")
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_metrics_count_calls_by_code(served: Served) -> None:
    server, _, channel = served
    await _get(channel, "TEAPOT-1")
    with pytest.raises(grpc.aio.AioRpcError):
        await _get(channel, "MISSING")
    handled = server.metrics.handled
    assert handled.labels(SERVICE, "GetProduct", "OK")._value.get() == 1
    assert handled.labels(SERVICE, "GetProduct", "NOT_FOUND")._value.get() == 1


async def test_a_rule_that_cannot_be_evaluated_is_invalid_argument() -> None:
    from google.protobuf.timestamp_pb2 import Timestamp

    from mercato.analytics.v1 import analytics_pb2
    from mercato_common.interceptors import ValidationInterceptor

    # Far-apart timestamps overflow the duration arithmetic of a CEL rule.
    request = analytics_pb2.GetSalesSummaryRequest(
        start_time=Timestamp(seconds=-62135596800),
        end_time=Timestamp(seconds=253402300799),
        bucket=analytics_pb2.BUCKET_DAY,
    )

    async def proceed() -> None:
        raise AssertionError("the servicer must not run")

    with pytest.raises(InvalidArgument):
        await ValidationInterceptor().around("/x/Y", request, None, proceed)  # type: ignore[arg-type]


async def test_a_nul_character_anywhere_in_the_strings_is_invalid_argument() -> None:
    from mercato.catalog.v1 import catalog_pb2
    from mercato_common.interceptors import ValidationInterceptor

    request = catalog_pb2.CreateProductRequest()
    request.product.sku = "NUL-1"
    request.product.name = "bad\x00name"
    request.product.price.currency_code = "EUR"
    request.product.price.amount_minor = 100
    request.product.attributes["colour"] = "re\x00d"

    async def proceed() -> None:
        raise AssertionError("the servicer must not run")

    with pytest.raises(InvalidArgument) as refused:
        await ValidationInterceptor().around("/x/Y", request, None, proceed)  # type: ignore[arg-type]
    assert {v.field for v in refused.value.field_violations} == {
        "product.name",
        "product.attributes['colour']",
    }
