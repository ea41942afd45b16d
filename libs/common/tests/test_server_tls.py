"""TLS and mutual TLS from certificate files, and the message size limit."""

import datetime
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from mercato_common.client import ClientTls
from mercato_common.server import GrpcServer
from mercato_common.settings import BaseServiceSettings


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer[0].subject if issuer else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
    path.with_suffix(".crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    path.with_suffix(".key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, all from the CA."""
    ca_key = _key()
    ca = _cert("mercato test CA", ca_key, None, ca=True)
    _write(tmp_path / "ca", ca, ca_key)
    for name in ("server", "client"):
        key = _key()
        _write(tmp_path / name, _cert(name, key, (ca, ca_key)), key)
    return tmp_path


@asynccontextmanager
async def _serve(settings: BaseServiceSettings) -> AsyncIterator[int]:
    server = GrpcServer(settings, error_domain="test.mercato", registry=CollectorRegistry())
    port = await server.start()
    try:
        yield port
    finally:
        await server.stop()


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


async def test_tls_server_answers_a_client_that_trusts_its_ca(pki: Path) -> None:
    async with _serve(_settings(pki, mutual=False)) as port:
        credentials = ClientTls(ca_file=pki / "ca.crt").credentials()
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as plain:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _check(plain)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_refuses_a_client_without_a_certificate(pki: Path) -> None:
    async with _serve(_settings(pki, mutual=True)) as port:
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


async def test_messages_over_the_size_limit_are_refused() -> None:
    settings = BaseServiceSettings(
        service_name="small", grpc_port=0, shutdown_drain_seconds=0, max_message_bytes=1024
    )
    async with _serve(settings) as port, grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        assert (await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)).status
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(service="x" * 4096), timeout=5)
        assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
