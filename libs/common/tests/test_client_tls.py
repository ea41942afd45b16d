"""Outgoing channels over (mutual) TLS configured from settings: ``client_tls``."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import ClassVar

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mercato_common.client import ClientTls, create_channel
from mercato_common.settings import BaseServiceSettings, SettingsError, load_settings

HEALTH = "grpc.health.v1.Health"


class CallerSettings(BaseServiceSettings):
    env_prefix: ClassVar[str] = "MERCATO_CALLER_"


def _caller(pki: Path, *, ca: bool = True, cert: bool = True) -> CallerSettings:
    """A calling service's settings as its deployment sets them: own certificate, the CA."""
    environ = {"MERCATO_CALLER_SERVICE_NAME": "caller"}
    if cert:
        environ["MERCATO_CALLER_TLS_CERT_FILE"] = str(pki / "client.crt")
        environ["MERCATO_CALLER_TLS_KEY_FILE"] = str(pki / "client.key")
    if ca:
        environ["MERCATO_CALLER_TLS_CA_FILE"] = str(pki / "ca.crt")
    return load_settings(CallerSettings, environ)


async def _check(settings: CallerSettings, port: int) -> int:
    channel = create_channel(f"127.0.0.1:{port}", services=[HEALTH], tls=settings.client_tls)
    try:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(response.status)
    finally:
        await channel.close()


@pytest.fixture
async def mutual_tls_port(
    pki: Path, serving: Callable[[BaseServiceSettings], AbstractAsyncContextManager[int]]
) -> AsyncIterator[int]:
    """A GrpcServer that requires client certificates signed by the test CA."""
    settings = BaseServiceSettings(
        service_name="callee",
        grpc_port=0,
        shutdown_drain_seconds=0,
        tls_cert_file=pki / "server.crt",
        tls_key_file=pki / "server.key",
        tls_client_ca_file=pki / "ca.crt",
    )
    async with serving(settings) as port:
        yield port


def test_client_tls_reuses_the_service_certificate(pki: Path) -> None:
    assert _caller(pki).client_tls == ClientTls(
        ca_file=pki / "ca.crt", cert_file=pki / "client.crt", key_file=pki / "client.key"
    )
    assert _caller(pki, cert=False).client_tls == ClientTls(ca_file=pki / "ca.crt")


def test_no_ca_means_plaintext_outgoing_channels(pki: Path) -> None:
    assert _caller(pki, ca=False).client_tls is None


def test_certificate_without_key_is_refused(pki: Path) -> None:
    with pytest.raises(SettingsError, match="TLS_CERT_FILE and TLS_KEY_FILE"):
        load_settings(
            CallerSettings,
            {
                "MERCATO_CALLER_SERVICE_NAME": "caller",
                "MERCATO_CALLER_TLS_CA_FILE": str(pki / "ca.crt"),
                "MERCATO_CALLER_TLS_CERT_FILE": str(pki / "client.crt"),
            },
        )


async def test_channel_from_settings_reaches_a_mutual_tls_server(
    pki: Path, mutual_tls_port: int
) -> None:
    assert await _check(_caller(pki), mutual_tls_port) == health_pb2.HealthCheckResponse.SERVING


async def test_plaintext_channel_is_refused_by_a_tls_server(
    pki: Path, mutual_tls_port: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(_caller(pki, ca=False), mutual_tls_port)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_tls_channel_without_a_client_certificate_is_refused(
    pki: Path, mutual_tls_port: int
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _check(_caller(pki, cert=False), mutual_tls_port)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
