"""TLS and mutual TLS from certificate files, and the message size limit."""

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mercato_common.client import ClientTls
from mercato_common.settings import BaseServiceSettings

Serving = Callable[[BaseServiceSettings], AbstractAsyncContextManager[int]]


async def _check(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    return int(response.status)


def _settings(pki: Path, *, mutual: bool) -> BaseServiceSettings:
    return BaseServiceSettings(
        service_name="tls",
        grpc_port=0,
        shutdown_drain_seconds=0,
        tls_cert_file=pki / "server.crt",
        tls_key_file=pki / "server.key",
        tls_client_ca_file=(pki / "ca.crt") if mutual else None,
    )


async def test_tls_server_answers_a_client_that_trusts_its_ca(pki: Path, serving: Serving) -> None:
    async with serving(_settings(pki, mutual=False)) as port:
        credentials = ClientTls(ca_file=pki / "ca.crt").credentials()
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _check(plain)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_client_without_a_certificate(
    pki: Path, serving: Serving
) -> None:
    async with serving(_settings(pki, mutual=True)) as port:
        with_cert = ClientTls(
            ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key"
        ).credentials()
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", with_cert) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        without_cert = ClientTls(ca_file=pki / "ca.crt").credentials()
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", without_cert) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _check(channel)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_messages_over_the_size_limit_are_refused(serving: Serving) -> None:
    settings = BaseServiceSettings(
        service_name="small", grpc_port=0, shutdown_drain_seconds=0, max_message_bytes=1024
    )
    async with serving(settings) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(service="x" * 4096), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
