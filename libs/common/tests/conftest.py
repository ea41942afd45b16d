"""Shared fixtures of mercato_common's tests: a throwaway PKI for TLS and mutual TLS."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from mercato_common.server import GrpcServer
from mercato_common.settings import BaseServiceSettings
from mercato_devstack import pki as local_pki

HOSTS = ["localhost", "127.0.0.1"]


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    """A CA, a server certificate for 127.0.0.1, and a client certificate, all from the CA:
    ca.crt/.key, server.crt/.key, client.crt/.key."""
    local_pki.issue(
        tmp_path, {"server": HOSTS, "client": HOSTS}, days=1, common_name="mercato test CA"
    )
    return tmp_path


@asynccontextmanager
async def _serving(settings: BaseServiceSettings) -> AsyncIterator[int]:
    server = GrpcServer(settings, error_domain="test.mercato", registry=CollectorRegistry())
    port = await server.start()
    try:
        yield port
    finally:
        await server.stop()


@pytest.fixture
def serving() -> Callable[[BaseServiceSettings], AbstractAsyncContextManager[int]]:
    """``async with serving(settings) as port``: a GrpcServer of ``settings`` (health only)."""
    return _serving
