"""Rate limits: N per second shared by two gateway processes through Redis, leases; Redis down."""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import generate_latest
from redis.asyncio import Redis

from mercato_common.redis_client import fail_fast_redis
from mercato_gateway.ratelimit import RateLimiter, lease_size
from mercato_gateway.settings import RateLimitPolicy

from .conftest import Suite, start_gateway_process, stop_gateway, wait_healthy

pytestmark = pytest.mark.integration

RATE = 5
BURST = 5
_LIMIT = {"MERCATO_GATEWAY_RATE_LIMIT_DEFAULT": json.dumps({"rate": RATE, "burst": BURST})}


async def _one_budget(
    requests: list[Coroutine[Any, Any, httpx.Response]],
) -> tuple[list[httpx.Response], list[httpx.Response]]:
    """Send ``requests`` at once from a fresh bucket; assert they drew on one budget (the burst
    plus what refilled meanwhile: two separate budgets would let through twice the burst).
    The allowed and the limited responses."""
    await asyncio.sleep(1.2)  # a fresh bucket for this client
    begin = time.monotonic()
    responses = await asyncio.gather(*requests)
    elapsed = time.monotonic() - begin
    allowed = [r for r in responses if r.status_code == 200]
    limited = [r for r in responses if r.status_code == 429]
    assert len(allowed) + len(limited) == len(responses), [r.text for r in responses]
    # One budget: the burst plus what refilled while the requests were served. Two budgets would
    # let through up to twice as many (2 x BURST + 2 x RATE x elapsed). The refill is counted
    # from the time taken (a loaded machine serves them slower, and more tokens refill).
    assert BURST <= len(allowed) <= BURST + RATE * elapsed + 1, (len(allowed), elapsed)
    return allowed, limited


async def test_limit_holds_across_two_gateway_processes(suite: Suite) -> None:
    prefix = f"{suite.redis_prefix}two:{uuid.uuid4().hex[:6]}:"
    started = [await start_gateway_process(suite, prefix, **_LIMIT) for _ in range(2)]
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            for process, url in started:
                await wait_healthy(http, url, process)
            urls = [url for _, url in started]
            # Requests alternate between the two processes.
            allowed, limited = await _one_budget(
                [http.get(f"{urls[i % 2]}/.well-known/jwks.json") for i in range(6 * BURST)]
            )
            served_by = {str(r.url).split("/.well-known")[0] for r in allowed}
            assert served_by == set(urls)  # both processes served part of the shared budget
            refused = limited[0]
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.headers["ratelimit-policy"] == f'"default";q={BURST};w=1'
            assert refused.headers["ratelimit"].startswith('"default";r=0;')
            assert refused.json()["error"]["reason"] == "RATE_LIMITED"

            # A second client (another subject) has its own bucket.
            token = {"authorization": f"Bearer {suite.tokens.admin}"}
            other = await http.get(f"{urls[0]}/v1/users/me", headers=token)
            assert other.status_code == 200, other.text
    finally:
        await asyncio.gather(*(stop_gateway(process) for process, _ in started))
    # Graceful exit: uvicorn drains, runs the shutdown, then re-raises the signal it caught.
    assert all(process.returncode in (0, -signal.SIGTERM) for process, _ in started), [
        process.returncode for process, _ in started
    ]


async def test_limit_holds_across_the_workers_of_one_gateway(suite: Suite) -> None:
    """WORKERS=2: two worker processes accept on one port; the limit is still one budget."""
    prefix = f"{suite.redis_prefix}workers:{uuid.uuid4().hex[:6]}:"
    process, url = await start_gateway_process(suite, prefix, MERCATO_GATEWAY_WORKERS="2", **_LIMIT)
    try:
        async with httpx.AsyncClient(timeout=10) as http:
            await wait_healthy(http, url, process)
            workers = _children(process.pid)
            deadline = time.monotonic() + 30
            while len(workers) < 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                workers = _children(process.pid)
            assert len(workers) == 2, workers
            # Every worker up (each answers /healthz once its application started).
            for _ in range(20):
                assert (await http.get(f"{url}/healthz")).status_code == 200
            # Separate connections, so the kernel spreads them over both workers' accepts.
            await _one_budget(
                [_fresh_get(f"{url}/.well-known/jwks.json") for _ in range(6 * BURST)]
            )
    finally:
        await stop_gateway(process)
    assert process.returncode in (0, -signal.SIGTERM), process.returncode


def _children(pid: int) -> list[str]:
    """The worker processes of the gateway ``pid``: its children (Linux lists them per thread)
    but multiprocessing's resource tracker."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [
        child
        for child in children
        if b"resource_tracker" not in Path(f"/proc/{child}/cmdline").read_bytes()
    ]


async def _fresh_get(url: str) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as http:
        return await http.get(url)


async def test_redis_down_falls_back_to_local_buckets(suite: Suite) -> None:
    app = await suite.gateway(
        redis_url="redis://127.0.0.1:1/0",
        rate_limit_default={"rate": 1, "burst": 3},
        redis_breaker_seconds=30,
    )
    async with suite.client(app) as http:
        statuses = [(await http.get("/.well-known/jwks.json")).status_code for _ in range(5)]
        assert statuses == [200, 200, 200, 429, 429]
        metrics = generate_latest(app.registry).decode()
        assert "gateway_rate_limit_redis_errors_total 1.0" in metrics
        assert "gateway_rate_limit_degraded 1.0" in metrics
        assert 'backend="local"' in metrics
        ready = await http.get("/readyz")
        assert ready.status_code == 200  # a degraded limiter does not take the gateway out
        assert ready.json()["checks"]["redis"] == "down"

    closed = await suite.gateway(
        redis_url="redis://127.0.0.1:1/0", rate_limit_on_redis_error="closed"
    )
    async with suite.client(closed) as http:
        refused = await http.get("/.well-known/jwks.json")
        assert refused.status_code == 503
        assert refused.json()["error"]["reason"] == "RATE_LIMITER_UNAVAILABLE"
        assert (await http.get("/readyz")).status_code == 503


async def _script_calls(redis: Redis) -> int:
    """Scripts Redis has run so far (all clients): the limiter's round trips."""
    stats = await redis.info("commandstats")
    calls = (stats.get(f"cmdstat_{name}", {}).get("calls", 0) for name in ("evalsha", "eval"))
    return sum(int(count) for count in calls)


async def test_leases_cost_one_round_trip_per_lease_and_stay_within_the_shared_budget(
    suite: Suite,
) -> None:
    """Two limiters (two replicas) on one Redis bucket of 200 at 100/s, leases of 10: the
    allowed requests cost about a tenth of the round trips, and together the two never allow
    more than the bucket holds plus what refilled."""
    policy = RateLimitPolicy(rate=100, burst=200)
    assert lease_size(policy) == 10
    prefix = f"{suite.redis_prefix}lease:{uuid.uuid4().hex[:6]}:"
    clients = [fail_fast_redis(suite.backends.redis_url, timeout_ms=2000) for _ in range(2)]
    limiters = [
        RateLimiter(client, policies={"default": policy}, prefix=prefix) for client in clients
    ]
    try:
        before = await _script_calls(clients[0])
        begin = time.monotonic()
        first = [await limiters[n % 2].check("default", "sub:one") for n in range(150)]
        assert all(decision.allowed for decision in first)  # within the burst
        assert await _script_calls(clients[0]) - before <= 2 * (75 // 10 + 1)  # not 150

        rest = [await limiters[n % 2].check("default", "sub:one") for n in range(300)]
        elapsed = time.monotonic() - begin
        allowed = 150 + sum(decision.allowed for decision in rest)
        # Never more than the shared bucket gave; at most a lease per replica left unspent.
        assert allowed <= 200 + 100 * elapsed + 1, (allowed, elapsed)
        assert allowed >= 200 - 2 * 10, (allowed, elapsed)
        refused = next(decision for decision in rest if not decision.allowed)
        assert refused.retry_after >= 1
        assert refused.remaining == 0
    finally:
        for client in clients:
            await client.aclose()
