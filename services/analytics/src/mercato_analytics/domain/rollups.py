"""Roll-ups: the aggregates folded ahead per minute, hour and day, so that a query reads a few
documents, however long the history.

A roll-up of one minute holds the :class:`Figures` of that minute: the sales counters and
per-currency sales and the product lines of the facts whose own time is in it, and the funnel
stages of the facts whose order was placed in it. An hour is the merge of its minutes, a day of
its hours. Every figure is a sum, so merging is exact and the order of merging does not matter.

A minute whose facts changed since it was last rolled up is *dirty* (marked in the store when a
fact is applied): its roll-up, and the roll-ups of its hour and day, may be stale. A query
therefore reads a dirty minute from its facts, and its hour and day at the next finer level
(:func:`plan_reads`); everything else from roll-ups. The result equals the fold of every fact in
the range at any moment, wherever the roll-up work stands.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from mercato_analytics.domain.aggregates import (
    FUNNEL_STAGES,
    Funnel,
    ProductRow,
    SalesFigures,
    add_lines,
    count_stage,
    rows_of,
)
from mercato_analytics.domain.buckets import BucketSize, ceil_time, floor_time
from mercato_analytics.domain.events import F_PLACE_TIME, F_TIME, OrderEvent, UserRegistered

__all__ = [
    "Figures",
    "ReadPlan",
    "Span",
    "dirty_minutes_of",
    "fold_facts",
    "fold_per_minute",
    "merge_all",
    "plan_reads",
    "rollup_id",
]

# The next finer roll-up level of each level.
_FINER = {BucketSize.DAY: BucketSize.HOUR, BucketSize.HOUR: BucketSize.MINUTE}


@dataclass
class Figures:
    """What a roll-up holds (see the module doc); the fold of facts, or the merge of roll-ups."""

    sales: SalesFigures = field(default_factory=SalesFigures)
    funnel: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FUNNEL_STAGES, 0))
    products: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def add_timed(self, fact: Mapping[str, Any]) -> None:
        """A fact whose own time is in the range: sales and product lines."""
        self.sales.add(fact)
        add_lines(self.products, fact)

    def add_placed(self, fact: Mapping[str, Any]) -> None:
        """A fact whose order was placed in the range: its funnel stage."""
        count_stage(self.funnel, fact)

    def merge(self, other: Figures) -> None:
        self.sales.merge(other.sales)
        for stage, count in other.funnel.items():
            self.funnel[stage] += count
        for key, (units, revenue) in other.products.items():
            acc = self.products.setdefault(key, [0, 0])
            acc[0] += units
            acc[1] += revenue

    @property
    def empty(self) -> bool:
        return not (
            any(self.sales.counters.values())
            or self.sales.sales
            or any(self.funnel.values())
            or self.products
        )

    def funnel_figures(self) -> Funnel:
        return Funnel(**self.funnel)

    def product_rows(self) -> list[ProductRow]:
        return rows_of(self.products)

    def document(self) -> dict[str, Any]:
        """The stored form (plain integers; the store decides their BSON type)."""
        return {
            **self.sales.document(),
            "funnel": dict(self.funnel),
            "products": [
                {"sku": sku, "currency": code, "units": units, "revenue": revenue}
                for (sku, code), (units, revenue) in sorted(self.products.items())
            ],
        }

    @classmethod
    def from_document(cls, doc: Mapping[str, Any]) -> Figures:
        figures = cls(sales=SalesFigures.from_document(doc))
        for stage, count in (doc.get("funnel") or {}).items():
            if stage in figures.funnel:
                figures.funnel[stage] = int(count)
        for row in doc.get("products") or ():
            figures.products[(str(row["sku"]), str(row["currency"]))] = [
                int(row["units"]),
                int(row["revenue"]),
            ]
        return figures


def rollup_id(level: BucketSize, start: datetime) -> str:
    """The document id of the roll-up of ``level`` starting at ``start``."""
    return f"{level.value}|{start.isoformat()}"


def dirty_minutes_of(event: OrderEvent | UserRegistered) -> set[datetime]:
    """The minutes whose roll-ups an event's fact changes: of its own time and, for an order
    event, of the order's placement time."""
    minutes = {floor_time(event.time, BucketSize.MINUTE)}
    if isinstance(event, OrderEvent):
        minutes.add(floor_time(event.place_time, BucketSize.MINUTE))
    return minutes


@dataclass(frozen=True, slots=True)
class Span:
    """The roll-ups of ``level`` whose start is in ``[start, end)``."""

    level: BucketSize
    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """Where a range's figures are read: roll-up spans, and the minutes read from facts."""

    rollups: tuple[Span, ...]
    raw: tuple[datetime, ...]


def plan_reads(
    start: datetime, end: datetime, *, coarsest: BucketSize, dirty: Iterable[datetime]
) -> ReadPlan:
    """Cover ``[start, end)`` (whole minutes) with roll-ups no coarser than ``coarsest``, as
    coarse as possible, and with facts for the ``dirty`` minutes (see the module doc).

    A sales summary by hour passes ``HOUR`` (a day roll-up would mix its hours); the funnel and
    the product ranking pass ``DAY``. The pieces are disjoint and together exactly the range.
    """
    marks = sorted({floor_time(m, BucketSize.MINUTE) for m in dirty if start <= m < end})
    spans: list[Span] = []
    raw: list[datetime] = []

    def add_span(level: BucketSize, a: datetime, b: datetime) -> None:
        if spans and spans[-1].level is level and spans[-1].end == a:
            spans[-1] = Span(level, spans[-1].start, b)
        else:
            spans.append(Span(level, a, b))

    def cover(a: datetime, b: datetime, level: BucketSize) -> None:
        if a >= b:
            return
        if level is BucketSize.MINUTE:
            cursor = a
            for mark in marks[bisect.bisect_left(marks, a) : bisect.bisect_left(marks, b)]:
                if cursor < mark:
                    add_span(level, cursor, mark)
                raw.append(mark)
                cursor = mark + level.step
            if cursor < b:
                add_span(level, cursor, b)
            return
        finer = _FINER[level]
        first, last = ceil_time(a, level), floor_time(b, level)
        if first >= last:
            cover(a, b, finer)
            return
        cover(a, first, finer)
        # From one dirty unit to the next (a range may span millennia: never unit by unit).
        unit = first
        while unit < last:
            i = bisect.bisect_left(marks, unit)
            if i == len(marks) or marks[i] >= last:
                add_span(level, unit, last)
                break
            dirty_unit = floor_time(marks[i], level)
            if unit < dirty_unit:
                add_span(level, unit, dirty_unit)
            following = dirty_unit + level.step
            cover(dirty_unit, following, finer)
            unit = following
        cover(last, b, finer)

    cover(start, end, coarsest)
    return ReadPlan(rollups=tuple(spans), raw=tuple(raw))


def fold_facts(timed: Iterable[Mapping[str, Any]], placed: Iterable[Mapping[str, Any]]) -> Figures:
    """The figures of one range from its facts: ``timed`` (own time in the range) and ``placed``
    (order placed in the range)."""
    figures = Figures()
    for fact in timed:
        figures.add_timed(fact)
    for fact in placed:
        figures.add_placed(fact)
    return figures


def fold_per_minute(
    timed: Iterable[Mapping[str, Any]], placed: Iterable[Mapping[str, Any]]
) -> dict[datetime, Figures]:
    """The figures of each minute that has facts: ``timed`` counted in the minute of their own
    time, ``placed`` in the minute of their order's placement."""
    per_minute: dict[datetime, Figures] = defaultdict(Figures)
    for fact in timed:
        per_minute[floor_time(fact[F_TIME], BucketSize.MINUTE)].add_timed(fact)
    for fact in placed:
        per_minute[floor_time(fact[F_PLACE_TIME], BucketSize.MINUTE)].add_placed(fact)
    return dict(per_minute)


def merge_all(parts: Sequence[Figures]) -> Figures:
    total = Figures()
    for part in parts:
        total.merge(part)
    return total
