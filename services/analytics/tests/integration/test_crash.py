"""The consumer process killed with SIGKILL mid-stream, restarted: exact totals (real stack)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import tempfile
import time
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient

from mercato.analytics.v1 import analytics_pb2
from mercato_analytics import samples
from mercato_analytics.store import AnalyticsStore

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _scrape(port: int, name: str, label: str) -> float:
    """Sum of the samples of ``name`` carrying ``label`` (e.g. ``outcome="applied"``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith(name + "{") and label in line
    )


async def _wait_for(predicate, within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not await predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_sigkilled_consumer_restarts_to_exact_totals(harness, mongo_uri) -> None:
    published, expected = samples.simulate(800, users=40, seed=5)
    facts_total = sum(1 for item in published if item.source != "catalog")
    await harness.publisher.send_all(published)
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = AnalyticsStore(client[harness.env.database])
    log_dir = Path(tempfile.mkdtemp(prefix="analytics-crash-"))
    processes: list[asyncio.subprocess.Process] = []

    async def spawn(name: str, metrics_port: int) -> asyncio.subprocess.Process:
        log = (log_dir / f"{name}.log").open("wb")
        process = await asyncio.create_subprocess_exec(
            *harness.command("serve"),
            env=harness.env.environ(
                CONSUMERS="2", MAX_POLL_RECORDS="25", METRICS_PORT=str(metrics_port)
            ),
            stdout=log,
            stderr=log,
        )
        processes.append(process)
        return process

    try:
        first = await spawn("first", _free_port())

        async def some_applied() -> bool:
            assert first.returncode is None, (log_dir / "first.log").read_text()[-3000:]
            return await store.count_facts() >= facts_total // 4

        await _wait_for(some_applied, 60, "the first consumer to apply a quarter of the events")
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        await asyncio.sleep(0.5)  # an insert the server was running when the client died
        at_kill = await store.count_facts()
        assert at_kill < facts_total, "the consumer finished before it could be killed"

        port = _free_port()
        second = await spawn("second", port)
        await harness.wait_caught_up(within=90)
        assert await store.count_facts() == facts_total
        # The restarted consumer applied exactly what was missing; what the killed one had
        # applied but not committed came again and was recognised as already applied.
        events = "mercato_analytics_events_total"
        assert _scrape(port, events, 'outcome="applied"') == facts_total - at_kill
        redelivered = _scrape(port, events, 'outcome="duplicate"')
        print(f"killed at {at_kill}/{facts_total} facts; {redelivered:.0f} redelivered")

        queries = await harness.make(consume=False)
        assert expected.first_time is not None
        start = expected.first_time.replace(hour=0, minute=0, second=0, microsecond=0)
        window = (start, start + timedelta(days=2))
        summary = await queries.summary(*window, analytics_pb2.BUCKET_HOUR)
        harness.assert_totals(summary.total, expected)
        funnel = await queries.funnel(*window)
        assert (funnel.placed, funnel.paid, funnel.fulfilled, funnel.cancelled) == (
            expected.placed,
            expected.paid,
            expected.fulfilled,
            expected.cancelled,
        )
        top = await queries.top(*window, analytics_pb2.RANK_BY_UNITS, limit=100)
        assert {p.sku: p.units for p in top.products} == dict(expected.sku_units)

        second.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(second.wait(), 30) == 0
    finally:
        for process in processes:
            if process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
        await client.close()
