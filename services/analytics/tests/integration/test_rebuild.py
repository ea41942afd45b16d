"""Rebuild from the topics reproduces the live aggregates exactly (real stack)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from mercato.analytics.v1 import analytics_pb2
from mercato_analytics import samples
from mercato_analytics.commands import rebuild_store
from mercato_analytics.service import GroupActiveError
from mercato_analytics.store import AnalyticsStore
from mercato_devstack.testing import temporary_mongo_database

pytestmark = pytest.mark.integration


async def _answers(analytics: Any, start: Any) -> list[Any]:
    """Every query answer over the test's two days, as messages (compared with ==)."""
    end = start + timedelta(days=2)
    out: list[Any] = [
        await analytics.summary(start, end, analytics_pb2.BUCKET_DAY),
        await analytics.summary(start, end, analytics_pb2.BUCKET_HOUR),
        await analytics.summary(start, end, analytics_pb2.BUCKET_HOUR, currency="EUR"),
        await analytics.funnel(start, end),
        await analytics.top(start, end, analytics_pb2.RANK_BY_UNITS, limit=100),
        await analytics.top(start, end, analytics_pb2.RANK_BY_REVENUE, currency="USD"),
    ]
    for hour in range(0, 48, 6):
        minutes = start + timedelta(hours=hour)
        out.append(
            await analytics.summary(
                minutes, minutes + timedelta(hours=6), analytics_pb2.BUCKET_MINUTE
            )
        )
    return out


async def test_rebuild_reproduces_the_live_aggregates(harness, mongo_uri) -> None:
    published, expected = samples.simulate(250, users=20, seed=21)
    assert expected.first_time is not None
    start = expected.first_time.replace(hour=0, minute=0, second=0, microsecond=0)
    live = await harness.make()
    await harness.publisher.send_all(published)
    # Also a duplicate and a poison message, which the rebuild must treat like the live run.
    duplicate = published[5]
    await harness.publisher.send(duplicate.source, duplicate.envelope, partition=2)
    await harness.publisher.send("orders", b"junk")
    await harness.wait_caught_up()
    live_facts = await live.app.store.facts_snapshot()
    live_answers = await _answers(live, start)
    harness.assert_totals(live_answers[0].total, expected)

    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    connection = harness.env.connection()
    topics = (harness.env.auth, harness.env.catalog, harness.env.orders)
    try:
        # In place is refused while the consumers run.
        with pytest.raises(GroupActiveError):
            await rebuild_store(
                connection=connection,
                store=AnalyticsStore(client[harness.env.database]),
                topics=topics,
                group_id=harness.env.group,
                commit_group=True,
            )

        # A side build through the CLI, into another database, while the service runs.
        async with temporary_mongo_database(mongo_uri) as side_db:
            process = await asyncio.create_subprocess_exec(
                *harness.command("rebuild", "--database", side_db),
                env=harness.env.environ(),
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
            )
            output, _ = await asyncio.wait_for(process.communicate(), 120)
            assert process.returncode == 0, output.decode()[-3000:]
            assert "group offsets   unchanged" in output.decode()
            side_store = AnalyticsStore(client[side_db])
            assert await side_store.facts_snapshot() == live_facts
            side = await harness.make(consume=False, mongo_database=side_db)
            assert await _answers(side, start) == live_answers
            await harness.stop(side)

        # In place, after the consumers stopped: same facts; the group resumes after it.
        await harness.stop(live)
        report = await rebuild_store(
            connection=connection,
            store=AnalyticsStore(client[harness.env.database]),
            topics=topics,
            group_id=harness.env.group,
            commit_group=True,
        )
        assert report.committed
        assert report.skipped == 1
        assert report.outcomes["applied"] == len(live_facts)
        assert report.outcomes["duplicate"] == 1
        assert await AnalyticsStore(client[harness.env.database]).facts_snapshot() == live_facts

        restarted = await harness.make()
        await harness.wait_caught_up()
        assert await restarted.app.store.count_facts() == len(live_facts)  # nothing re-applied
        more, more_expected = samples.simulate(
            40, seed=22, start=start + timedelta(hours=20), catalog_events=False
        )
        await harness.publisher.send_all(more)
        await harness.wait_caught_up()
        total = (
            await restarted.summary(start, start + timedelta(days=2), analytics_pb2.BUCKET_DAY)
        ).total
        assert total.orders_placed == expected.placed + more_expected.placed
        assert total.orders_paid == expected.paid + more_expected.paid
        revenue = {s.revenue.currency_code: s.revenue.amount_minor for s in total.sales}
        assert revenue == {
            code: expected.revenue.get(code, 0) + more_expected.revenue.get(code, 0)
            for code in set(expected.revenue) | set(more_expected.revenue)
        }
    finally:
        await client.close()
