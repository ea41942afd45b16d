"""The analytics store on the real FerretDB: a batch of facts in bulk, exactly once."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from mercato_analytics.domain import EventOrigin, OrderEvent, OrderEventKind, SaleLine
from mercato_analytics.store import ApplyOutcome
from mercato_analytics.store.mongo import WRITES_PER_COMMAND

pytestmark = pytest.mark.integration


def _placed(number: int, when: datetime) -> tuple[EventOrigin, OrderEvent]:
    origin = EventOrigin(
        event_id=f"event-{number}",
        event_type="mercato.orders.events.v1.OrderPlaced",
        event_time=when,
        topic="orders",
        partition=number % 3,
        offset=number,
    )
    event = OrderEvent(
        kind=OrderEventKind.PLACED,
        order_id=f"order-{number}",
        time=when,
        place_time=when,
        currency="EUR",
        amount=1250,
        lines=(SaleLine("MUG-1", 1, 1250),),
    )
    return origin, event


async def test_apply_many_inserts_each_fact_once_and_says_which_were_there(harness) -> None:
    store = (await harness.make(consume=False)).app.store
    when = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=10)
    events = [_placed(n, when) for n in range(WRITES_PER_COMMAND + 8)]  # two commands
    assert await store.apply(*events[3]) is ApplyOutcome.APPLIED
    # Event 3 is stored already; event 5 comes twice in the batch (a redelivered duplicate),
    # once in each command.
    batch = [*events, events[5]]
    outcomes = await store.apply_many(batch)
    expected = [ApplyOutcome.APPLIED] * len(batch)
    expected[3] = expected[-1] = ApplyOutcome.DUPLICATE
    assert outcomes == expected
    assert await store.count_facts() == len(events)
    # Again, all of it: nothing new, nothing lost.
    assert await store.apply_many(batch) == [ApplyOutcome.DUPLICATE] * len(batch)
    assert await store.count_facts() == len(events)
    stored = await store.facts.find_one({"_id": "event-7"})
    assert (stored["topic"], stored["partition"], stored["offset"]) == ("orders", 1, 7)
