"""Certificates renewed on disk are taken into use without a restart: a gRPC server presents the
new certificate to new connections, and an outgoing channel connects with the new client
certificate; a half-swapped pair (certificate and key that do not match) keeps the current one."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mercato_common import client as client_module
from mercato_common.client import ClientTls, create_channel
from mercato_common.settings import BaseServiceSettings
from mercato_devstack import pki as local_pki

HOSTS = ["localhost", "127.0.0.1"]

Serving = Callable[[BaseServiceSettings], AbstractAsyncContextManager[int]]


def _settings(folder: Path, *, port: int = 0, mutual: bool = False) -> BaseServiceSettings:
    return BaseServiceSettings(
        service_name="tls",
        grpc_port=port,
        shutdown_drain_seconds=0,
        tls_cert_file=folder / "server.crt",
        tls_key_file=folder / "server.key",
        tls_client_ca_file=(folder / "ca.crt") if mutual else None,
    )


def _presented_serial(port: int, ca_file: Path) -> int | None:
    """The serial of the certificate the server presents to a new (HTTP/2) connection."""
    return local_pki.presented_serial(port, ca_file, alpn=["h2"])


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def _swap_in(staging: Path, live: Path, *names: str) -> None:
    """Move new files over the live ones, one by one (as a renewal lands)."""
    for name in names:
        os.replace(staging / name, live / name)


async def _check(channel: grpc.aio.Channel) -> int:
    response = await health_pb2_grpc.HealthStub(channel).Check(
        health_pb2.HealthCheckRequest(), timeout=5
    )
    return int(response.status)


async def test_server_presents_a_renewed_certificate_to_new_connections(
    tmp_path: Path, serving: Serving
) -> None:
    live = tmp_path / "live"
    local_pki.issue(live, {"server": HOSTS}, days=1, common_name="reload CA")
    first = _serial(live / "server.crt")
    async with serving(_settings(live)) as port:
        assert _presented_serial(port, live / "ca.crt") == first

        staging = tmp_path / "staging"
        staging.mkdir()
        shutil.copy(live / "ca.crt", staging)
        shutil.copy(live / "ca.key", staging)
        local_pki.sign(staging, "server", HOSTS, days=1)
        renewed = _serial(staging / "server.crt")
        assert renewed != first

        # Half-way: the new certificate beside the old key. Not usable: the current stays.
        _swap_in(staging, live, "server.crt")
        assert _presented_serial(port, live / "ca.crt") == first
        _swap_in(staging, live, "server.key")
        assert _presented_serial(port, live / "ca.crt") == renewed
        # A client that was already connected keeps working.
        credentials = ClientTls(ca_file=live / "ca.crt").credentials()
        async with grpc.aio.secure_channel(f"127.0.0.1:{port}", credentials) as channel:
            assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING


async def test_channel_connects_with_a_renewed_client_certificate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, serving: Serving
) -> None:
    """Everything moves to a new CA (server certificate, client CA, client certificate, trust
    roots): a channel snapshotting the old files cannot reach the server any more, the kit's
    channel can."""
    monkeypatch.setattr(client_module, "TLS_CHECK_SECONDS", 0.0)
    live = tmp_path / "live"
    local_pki.issue(live, {"server": HOSTS, "client": []}, days=1, common_name="old CA")
    tls = ClientTls(
        ca_file=live / "ca.crt", cert_file=live / "client.crt", key_file=live / "client.key"
    )
    settings = _settings(live, mutual=True)
    async with serving(settings) as port:
        target = f"127.0.0.1:{port}"
        snapshot = grpc.aio.secure_channel(target, tls.credentials())
        channel = create_channel(target, services=[], tls=tls)
        assert await _check(snapshot) == health_pb2.HealthCheckResponse.SERVING
        assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING

    staging = tmp_path / "staging"
    local_pki.issue(staging, {"server": HOSTS, "client": []}, days=1, common_name="new CA")
    _swap_in(staging, live, "ca.crt", "ca.key", "server.crt", "server.key", "client.crt")
    _swap_in(staging, live, "client.key")
    # The server comes back on the same port with the new files (new connections only).
    async with serving(_settings(live, port=port, mutual=True)):
        assert await _check(channel) == health_pb2.HealthCheckResponse.SERVING
        assert channel.generation() == 1  # type: ignore[attr-defined]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _check(snapshot)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    await snapshot.close()
    await channel.close()
