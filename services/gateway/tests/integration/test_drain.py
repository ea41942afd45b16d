"""SIGTERM drains before the gateway stops: /readyz turns 503 at once while requests are still
served (each answer closes its connection, so keep-alive clients move on), and only after
SHUTDOWN_DRAIN_SECONDS does the listener close; the process then ends its shutdown."""

from __future__ import annotations

import asyncio
import signal
import time
import uuid

import httpx
import pytest

from .conftest import Suite, start_gateway_process, stop_gateway, wait_healthy

pytestmark = pytest.mark.integration

DRAIN_SECONDS = 3.0


async def test_sigterm_turns_readiness_off_then_serves_for_the_drain(suite: Suite) -> None:
    process, url = await start_gateway_process(
        suite,
        f"test:{uuid.uuid4().hex}:",
        MERCATO_GATEWAY_SHUTDOWN_DRAIN_SECONDS=str(DRAIN_SECONDS),
    )
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            await wait_healthy(http, url, process)
            ready = await http.get(f"{url}/readyz")
            assert ready.status_code == 200
            assert ready.headers.get("connection", "").lower() != "close"

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await asyncio.sleep(0.3)
            draining = await http.get(f"{url}/readyz")
            assert draining.status_code == 503
            assert draining.json()["checks"]["gateway"] == "draining"
            assert draining.headers["connection"].lower() == "close"
            served = 0
            # Requests keep being answered until the drain ends (bounded: 50 tries).
            for _ in range(50):
                if time.monotonic() - signalled > DRAIN_SECONDS - 0.5:
                    break
                answer = await http.get(f"{url}/healthz")
                assert answer.status_code == 200
                assert answer.headers["connection"].lower() == "close"
                served += 1
                await asyncio.sleep(0.1)
            assert served >= 10
            # uvicorn re-raises the signal it handled once it has shut down gracefully.
            exit_status = await asyncio.wait_for(process.wait(), DRAIN_SECONDS + 15)
            assert exit_status in (0, -signal.SIGTERM)
            assert time.monotonic() - signalled >= DRAIN_SECONDS
            with pytest.raises(httpx.TransportError):
                await http.get(f"{url}/healthz")
    finally:
        if process.returncode is None:
            await stop_gateway(process)
