"""The gateway's HTTPS certificate, renewed on disk, is served to new connections without a
restart (uvicorn's SSL context is reloaded in place); a half-swapped pair is not taken."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import uuid
from pathlib import Path

import pytest
from cryptography import x509

from mercato_common.client import TLS_CHECK_SECONDS
from mercato_devstack import pki as local_pki

from .conftest import Suite, start_gateway_process, stop_gateway

pytestmark = pytest.mark.integration

HOSTS = ["localhost", "127.0.0.1"]


def _served_serial(port: int, ca_file: Path) -> int | None:
    """The serial of the certificate a new HTTPS connection gets (None: not listening yet)."""
    return local_pki.presented_serial(port, ca_file)


def _serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


async def _until(expected: int, within: float, port: int, ca: Path) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(_served_serial, port, ca) == expected:
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"the gateway did not serve certificate {expected} within {within} s")


async def test_a_renewed_https_certificate_is_served_without_a_restart(
    suite: Suite, tmp_path: Path
) -> None:
    live = tmp_path / "live"
    local_pki.issue(live, {"server": HOSTS}, days=1, common_name="gateway test CA")
    first = _serial(live / "server.crt")
    process, url = await start_gateway_process(
        suite,
        f"test:{uuid.uuid4().hex}:",
        MERCATO_GATEWAY_TLS_CERT_FILE=str(live / "server.crt"),
        MERCATO_GATEWAY_TLS_KEY_FILE=str(live / "server.key"),
    )
    port = int(url.rsplit(":", 1)[1])
    ca = live / "ca.crt"
    try:
        await _until(first, 30, port, ca)
        staging = tmp_path / "staging"
        staging.mkdir()
        for name in ("ca.crt", "ca.key"):
            shutil.copy(live / name, staging / name)
        local_pki.sign(staging, "server", HOSTS, days=1)
        renewed = _serial(staging / "server.crt")
        # Half-way (new certificate, old key) for longer than one look: not taken.
        os.replace(staging / "server.crt", live / "server.crt")
        await asyncio.sleep(TLS_CHECK_SECONDS + 1)
        assert await asyncio.to_thread(_served_serial, port, ca) == first
        os.replace(staging / "server.key", live / "server.key")
        await _until(renewed, TLS_CHECK_SECONDS + 5, port, ca)
        assert process.returncode is None  # the same process all along
    finally:
        await stop_gateway(process)
