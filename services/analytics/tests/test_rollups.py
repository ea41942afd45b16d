"""Roll-ups (pure): a range read as ``plan_reads`` says equals the fold of all its facts, with
stale roll-ups behind every dirty minute."""

from __future__ import annotations

import random
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from mercato_analytics.domain import (
    BucketSize,
    Figures,
    OrderEvent,
    OrderEventKind,
    SaleLine,
    Span,
    dirty_minutes_of,
    fact_document,
    floor_time,
    fold_facts,
    fold_funnel,
    fold_sales,
    plan_reads,
    product_rows,
    summarize,
)
from mercato_analytics.domain.events import F_PLACE_TIME, F_TIME

T0 = datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def _facts(count: int, seed: int) -> list[dict[str, Any]]:
    """Order facts spread over about three days, payments and cancellations after placement."""
    rng = random.Random(seed)
    facts = []
    for n in range(count):
        placed = T0 + timedelta(seconds=rng.randrange(3 * 24 * 3600))
        kind = rng.choice(list(OrderEventKind))
        when = (
            placed
            if kind is OrderEventKind.PLACED
            else placed + timedelta(minutes=rng.randrange(120))
        )
        lines = (
            SaleLine(
                rng.choice(["A-1", "B-2", "C-3"]), rng.randrange(1, 4), rng.randrange(100, 900)
            ),
        )
        paid = kind is OrderEventKind.PAID
        refund = kind is OrderEventKind.CANCELLED and rng.random() < 0.5
        event = OrderEvent(
            kind=kind,
            order_id=f"o-{n}",
            time=when,
            place_time=placed,
            currency=rng.choice(["EUR", "USD"]) if paid or refund else "",
            amount=rng.randrange(100, 5000) if paid or refund else 0,
            lines=lines if paid else (),
            after_payment=refund,
        )
        facts.append(fact_document(event))
    return facts


class Rollups:
    """Roll-ups as the job leaves them: clean minutes exact, dirty minutes stale (built from
    only half of their facts), hours and days merged from whatever their parts say."""

    def __init__(self, facts: list[dict[str, Any]], dirty: set[datetime]) -> None:
        timed: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
        placed: dict[datetime, list[dict[str, Any]]] = defaultdict(list)
        for fact in facts:
            timed[floor_time(fact[F_TIME], BucketSize.MINUTE)].append(fact)
            placed[floor_time(fact[F_PLACE_TIME], BucketSize.MINUTE)].append(fact)
        self.docs: dict[BucketSize, dict[datetime, Figures]] = {size: {} for size in BucketSize}
        for minute in set(timed) | set(placed):
            stale = minute in dirty
            self.docs[BucketSize.MINUTE][minute] = fold_facts(
                timed[minute][: len(timed[minute]) // 2] if stale else timed[minute],
                placed[minute][: len(placed[minute]) // 2] if stale else placed[minute],
            )
        for finer, level in (
            (BucketSize.MINUTE, BucketSize.HOUR),
            (BucketSize.HOUR, BucketSize.DAY),
        ):
            for start, figures in self.docs[finer].items():
                self.docs[level].setdefault(floor_time(start, level), Figures()).merge(figures)
        self.facts = facts

    def read(self, span: Span) -> list[tuple[datetime, Figures]]:
        return [(s, f) for s, f in self.docs[span.level].items() if span.start <= s < span.end]

    def figures(
        self, start: datetime, end: datetime, coarsest: BucketSize, dirty: set[datetime]
    ) -> list[tuple[datetime, Figures]]:
        plan = plan_reads(start, end, coarsest=coarsest, dirty=dirty)
        parts = [part for span in plan.rollups for part in self.read(span)]
        for a in plan.raw:
            b = a + MINUTE
            parts.append(
                (
                    a,
                    fold_facts(
                        [f for f in self.facts if a <= f[F_TIME] < b],
                        [f for f in self.facts if a <= f[F_PLACE_TIME] < b],
                    ),
                )
            )
        return parts


@pytest.mark.parametrize("seed", range(6))
def test_reading_through_rollups_equals_folding_every_fact(seed: int) -> None:
    facts = _facts(600, seed)
    rng = random.Random(seed)
    dirty = {floor_time(rng.choice(facts)[F_TIME], BucketSize.MINUTE) for _ in range(25)}
    rollups = Rollups(facts, dirty)
    start = T0 + timedelta(minutes=rng.randrange(600))
    end = start + timedelta(minutes=rng.randrange(60, 3 * 24 * 60))

    parts = rollups.figures(start, end, BucketSize.DAY, dirty)
    merged = Figures()
    for _, figures in parts:
        merged.merge(figures)
    in_range = [f for f in facts if start <= f[F_TIME] < end]
    placed_in_range = [f for f in facts if start <= f[F_PLACE_TIME] < end]
    assert merged.funnel_figures() == fold_funnel(placed_in_range)
    assert merged.product_rows() == product_rows(in_range)

    for size in (BucketSize.HOUR, BucketSize.MINUTE):
        a, b = floor_time(start, size), floor_time(start, size) + timedelta(hours=20)
        per_bucket: dict[datetime, Figures] = {}
        for part_start, figures in rollups.figures(a, b, size, dirty):
            per_bucket.setdefault(floor_time(part_start, size), Figures()).merge(figures)
        summary = summarize(
            {k: v.sales for k, v in per_bucket.items()}, size=size, start=a, end=b, currency="EUR"
        )
        assert summary == fold_sales(facts, size=size, start=a, end=b, currency="EUR")


def test_a_clean_range_reads_the_coarsest_rollups_and_no_facts() -> None:
    start = datetime(2026, 3, 1, 22, 30, tzinfo=UTC)
    end = datetime(2026, 3, 5, 1, 15, tzinfo=UTC)
    plan = plan_reads(start, end, coarsest=BucketSize.DAY, dirty=[])
    assert plan.raw == ()
    assert [(s.level, s.start, s.end) for s in plan.rollups] == [
        (BucketSize.MINUTE, start, datetime(2026, 3, 1, 23, tzinfo=UTC)),
        (BucketSize.HOUR, datetime(2026, 3, 1, 23, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC)),
        (BucketSize.DAY, datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 5, tzinfo=UTC)),
        (BucketSize.HOUR, datetime(2026, 3, 5, tzinfo=UTC), datetime(2026, 3, 5, 1, tzinfo=UTC)),
        (BucketSize.MINUTE, datetime(2026, 3, 5, 1, tzinfo=UTC), end),
    ]


def test_a_dirty_minute_is_read_from_facts_and_its_hour_and_day_from_finer_rollups() -> None:
    start, end = datetime(2026, 3, 2, tzinfo=UTC), datetime(2026, 3, 4, tzinfo=UTC)
    dirty = datetime(2026, 3, 3, 10, 7, tzinfo=UTC)
    plan = plan_reads(start, end, coarsest=BucketSize.DAY, dirty=[dirty, end + MINUTE])
    assert plan.raw == (dirty,)
    levels = [(s.level, s.start, s.end) for s in plan.rollups]
    assert (BucketSize.DAY, start, datetime(2026, 3, 3, tzinfo=UTC)) in levels
    assert (BucketSize.MINUTE, datetime(2026, 3, 3, 10, tzinfo=UTC), dirty) in levels
    assert (BucketSize.MINUTE, dirty + MINUTE, datetime(2026, 3, 3, 11, tzinfo=UTC)) in levels
    assert all(
        not (
            s.start <= datetime(2026, 3, 3, 10, 7, tzinfo=UTC) < s.end
            and s.level is not BucketSize.MINUTE
        )
        for s in plan.rollups
    )


def test_an_order_event_dirties_the_minutes_of_its_time_and_its_placement() -> None:
    paid = OrderEvent(
        kind=OrderEventKind.PAID,
        order_id="o-1",
        time=T0 + timedelta(minutes=5, seconds=3),
        place_time=T0 + timedelta(seconds=59),
        currency="EUR",
        amount=100,
        lines=(SaleLine("A-1", 1, 100),),
    )
    assert dirty_minutes_of(paid) == {T0, T0 + 5 * MINUTE}


def test_figures_survive_their_stored_form() -> None:
    figures = fold_facts(_facts(50, 1), _facts(50, 2))
    again = Figures.from_document(figures.document())
    assert again.document() == figures.document()
    assert not again.empty
    assert Figures().empty


def test_a_range_of_millennia_is_planned_without_walking_its_days() -> None:
    start = datetime(2026, 12, 5, 18, 14, tzinfo=UTC)
    end = datetime(8926, 8, 13, 22, 21, tzinfo=UTC)
    dirty = datetime(2026, 12, 5, 19, 3, tzinfo=UTC)
    plan = plan_reads(start, end, coarsest=BucketSize.DAY, dirty=[dirty])
    assert plan.raw == (dirty,)
    assert len(plan.rollups) <= 8
    days = [s for s in plan.rollups if s.level is BucketSize.DAY]
    assert days == [
        Span(BucketSize.DAY, datetime(2026, 12, 6, tzinfo=UTC), datetime(8926, 8, 13, tzinfo=UTC))
    ]
