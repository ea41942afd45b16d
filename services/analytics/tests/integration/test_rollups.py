"""Roll-ups on the real stack: queries answer the same before and after the roll-up job, read
the roll-ups once rolled (the facts can be gone), and a minute changed meanwhile is read from
its facts until it is rolled up again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from mercato.analytics.v1 import analytics_pb2
from mercato_analytics import samples
from mercato_analytics.domain import BucketSize, OrderEvent, OrderEventKind, fact_document
from mercato_analytics.domain.rollups import rollup_id
from mercato_analytics.service import RollUp

pytestmark = pytest.mark.integration

DAY = analytics_pb2.BUCKET_DAY
HOUR = analytics_pb2.BUCKET_HOUR


def _day(when: datetime) -> datetime:
    return when.replace(hour=0, minute=0, second=0, microsecond=0)


async def _answers(analytics, start: datetime, end: datetime) -> tuple[object, ...]:
    by_day = await analytics.summary(start, end, DAY)
    by_hour = await analytics.summary(start, end, HOUR, currency="EUR")
    funnel = await analytics.funnel(start, end)
    top = await analytics.top(start, end, analytics_pb2.RANK_BY_UNITS, limit=50)
    return (
        by_day.SerializeToString(deterministic=True),
        by_hour.SerializeToString(deterministic=True),
        funnel.SerializeToString(deterministic=True),
        top.SerializeToString(deterministic=True),
    )


async def test_queries_read_rollups_and_the_dirty_minutes_facts(harness) -> None:
    # Roll-ups by an explicit job here (settle 0): the service's own job is slowed right down.
    analytics = await harness.make(rollup_interval_seconds=3600)
    published, expected = samples.simulate(120, users=10, seed=5, catalog_events=False)
    await harness.publisher.send_all(published)
    await harness.wait_caught_up()
    assert expected.first_time is not None
    start = _day(expected.first_time)
    end = start + timedelta(days=2)
    store = analytics.app.store

    from_facts = await _answers(analytics, start, end)  # every minute still dirty
    harness.assert_totals((await analytics.summary(start, end, DAY)).total, expected)
    assert await store.rollups.dirty.count_documents({}) > 0

    rollup = RollUp(store, settle=0.0, batch=10)
    taken = await rollup.run_until_clean()
    assert taken > 10  # several batches
    assert await store.rollups.dirty.count_documents({}) == 0
    days = store.rollups.rollups[BucketSize.DAY]
    day_doc = await days.find_one({"_id": rollup_id(BucketSize.DAY, start)})
    assert day_doc is not None
    assert await _answers(analytics, start, end) == from_facts

    # With the facts gone the answers stay: the queries read the roll-ups.
    await store.facts.delete_many({})
    assert await _answers(analytics, start, end) == from_facts

    # A late event for an old minute: read from its fact until rolled up, then from roll-ups.
    # The minute is past and empty: ten minutes after the samples (which end about two hours
    # ago), so it is settled whatever the time of day the test runs at.
    assert expected.last_time is not None
    late_time = (expected.last_time + timedelta(minutes=10)).replace(second=7, microsecond=0)
    late = samples.order_placed(
        "5e1d7c00-0000-4000-8000-00000000aa01",
        user_id="u-late",
        lines=[samples.Line("MUG-1", 1, 500)],
        currency="EUR",
        place_time=late_time,
    )
    await harness.publisher.send("orders", late)
    await harness.wait_caught_up()
    dirty = await store.rollups.dirty_minutes(start, end)
    assert dirty == [late_time.replace(second=0)]
    funnel = await analytics.funnel(start, end)
    assert funnel.placed == expected.placed + 1
    await rollup.run_until_clean()
    assert await store.rollups.dirty_minutes(start, end) == []
    await store.facts.delete_many({})
    assert (await analytics.funnel(start, end)).placed == expected.placed + 1
    by_day = await analytics.summary(start, end, DAY)
    assert by_day.total.orders_placed == expected.placed + 1


async def test_a_mark_renewed_while_rolling_up_survives(harness) -> None:
    analytics = await harness.make(consume=False, rollup_interval_seconds=3600)
    rollups = analytics.app.store.rollups
    minute = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    now = datetime.now(UTC)
    await rollups.mark_dirty({minute}, now=now - timedelta(seconds=10))
    [read] = await rollups.settled_marks(touched_before=now, minutes_before=now, limit=10)
    await rollups.mark_dirty({minute}, now=now)  # a consumer applied another fact meanwhile
    await rollups.clear_marks([read])
    assert await rollups.dirty_minutes(minute, minute + timedelta(minutes=1)) == [minute]
    [again] = await rollups.settled_marks(
        touched_before=now + timedelta(seconds=1), minutes_before=now, limit=10
    )
    await rollups.clear_marks([again])
    assert await rollups.dirty_minutes(minute, minute + timedelta(minutes=1)) == []


async def test_the_service_rolls_up_by_itself_and_one_replica_holds_the_lease(harness) -> None:
    first = await harness.make(rollup_interval_seconds=0.2, rollup_settle_seconds=1.1)
    second = await harness.make(rollup_interval_seconds=0.2, rollup_settle_seconds=1.1)
    published, expected = samples.simulate(30, users=5, seed=9, catalog_events=False)
    await harness.publisher.send_all(published)
    await harness.wait_caught_up()
    store = first.app.store
    for _ in range(150):  # up to 30 s
        if await store.rollups.dirty.count_documents({}) == 0:
            break
        await asyncio.sleep(0.2)
    assert await store.rollups.dirty.count_documents({}) == 0
    lease = await store.rollups.leases.find_one({"_id": "rollup"})
    assert lease is not None
    assert lease["holder"] in {first.app.rollup.holder, second.app.rollup.holder}
    assert expected.first_time is not None
    start = _day(expected.first_time)
    total = (await second.summary(start, start + timedelta(days=2), DAY)).total
    harness.assert_totals(total, expected)


async def test_facts_of_an_older_version_are_rolled_up_after_the_backfill(harness) -> None:
    analytics = await harness.make(consume=False, rollup_interval_seconds=3600)
    store = analytics.app.store
    placed_at = datetime(2026, 4, 5, 6, 7, 8, tzinfo=UTC)
    event = OrderEvent(
        kind=OrderEventKind.PLACED, order_id="o-old", time=placed_at, place_time=placed_at
    )
    # The database was fresh at start: no backfill will ever be needed.
    assert await store.rollups.done("minutes-backfilled")
    # A database of an older version: a fact without minutes, no mark, no flag.
    await store.rollups.leases.delete_one({"_id": "minutes-backfilled"})
    await store.facts.insert_one({"_id": "e-old", **fact_document(event)})
    day = (placed_at.replace(hour=0, minute=0, second=0), placed_at.replace(hour=23, minute=59))
    assert (await analytics.funnel(*day)).placed == 0
    rollup = RollUp(store, settle=0.0)
    assert await rollup.backfill() == 1
    assert await rollup.backfill() == 0  # once per database
    assert (await analytics.funnel(*day)).placed == 1  # dirty: read from the fact
    await rollup.run_until_clean()
    await store.facts.delete_many({})
    assert (await analytics.funnel(*day)).placed == 1  # from the roll-ups


async def test_the_single_rollup_collection_of_an_earlier_version_is_rolled_up_again(
    harness,
) -> None:
    analytics = await harness.make(consume=False, rollup_interval_seconds=3600)
    store = analytics.app.store
    placed_at = datetime(2026, 4, 5, 6, 7, 8, tzinfo=UTC)
    event = OrderEvent(
        kind=OrderEventKind.PLACED, order_id="o-single", time=placed_at, place_time=placed_at
    )
    await store.rollups.leases.delete_one({"_id": "minutes-backfilled"})
    await store.facts.insert_one({"_id": "e-single", **fact_document(event)})
    rollup = RollUp(store, settle=0.0)
    await rollup.backfill()
    await rollup.run_until_clean()
    # The database as an earlier version left it: every level in one collection, no mark.
    single = store.rollups.dirty.database["rollups"]
    for collection in store.rollups.rollups.values():
        docs = await collection.find({}).to_list()
        assert docs
        await single.insert_many(docs)
        await collection.delete_many({})
    day = (placed_at.replace(hour=0, minute=0, second=0), placed_at.replace(hour=23, minute=59))
    assert (await analytics.funnel(*day)).placed == 0  # the per-level collections are empty

    await rollup.note_fresh_database()  # what the job does at start, before any query
    assert (await analytics.funnel(*day)).placed == 1  # marked: read from the fact
    assert "rollups" not in await single.database.list_collection_names()
    await rollup.note_fresh_database()  # nothing left to move
    await rollup.run_until_clean()
    await store.facts.delete_many({})
    assert (await analytics.funnel(*day)).placed == 1  # from the per-level roll-ups


async def test_sales_by_hour_read_the_day_rollups(harness) -> None:
    analytics = await harness.make(rollup_interval_seconds=3600)
    store = analytics.app.store
    day = datetime(2026, 4, 5, tzinfo=UTC)
    published, expected = samples.simulate(
        60, users=6, seed=13, start=day + timedelta(hours=23, minutes=58), catalog_events=False
    )
    await harness.publisher.send_all(published)
    await harness.wait_caught_up()
    await RollUp(store, settle=0.0).run_until_clean()
    await store.facts.delete_many({})
    whole_days = (day, day + timedelta(days=2))  # the samples run past midnight
    by_hour = await analytics.summary(*whole_days, HOUR)
    harness.assert_totals(by_hour.total, expected)
    assert len({b.start_time.ToDatetime().hour for b in by_hour.buckets if b.orders_placed}) >= 2
    # Parts of days: from noon to noon (every sample), and from noon to midnight (those of the
    # first day only), read from the hour roll-ups first.
    noon_to_noon = (day + timedelta(hours=12), day + timedelta(days=1, hours=12))
    noon_to_midnight = (day + timedelta(hours=12), day + timedelta(days=1))
    partial = {
        span: await analytics.summary(*span, HOUR) for span in (noon_to_noon, noon_to_midnight)
    }
    harness.assert_totals(partial[noon_to_noon].total, expected)
    before_midnight = partial[noon_to_midnight].total.orders_placed
    assert 0 < before_midnight < by_hour.total.orders_placed

    async def unchanged() -> None:
        assert await analytics.summary(*whole_days, HOUR) == by_hour
        for span, summary in partial.items():
            assert await analytics.summary(*span, HOUR) == summary

    # A day of an earlier version, without its hours' sales: read by its hours instead.
    days = store.rollups.rollups[BucketSize.DAY]
    saved = await days.find({}).to_list()
    assert saved
    assert all("h" in doc for doc in saved)
    await days.update_many({}, {"$unset": {"h": ""}})
    await unchanged()

    # With the hours' sales in the days, the hour roll-ups are not read at all, for whole days
    # and for parts of days alike.
    for doc in saved:
        await days.replace_one({"_id": doc["_id"]}, doc)
    await store.rollups.rollups[BucketSize.HOUR].delete_many({})
    await unchanged()
