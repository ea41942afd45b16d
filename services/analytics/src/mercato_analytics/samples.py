"""Well-formed event envelopes and a small order-flow simulator, for tests, benchmarks and demos.

:func:`simulate` produces a stream of auth, catalog and orders events for ``orders`` orders
(placed; most paid; some fulfilled, cancelled before or after payment, or failed), together
with :class:`Expected`, the totals computed here by plain counting, independently of the
service's planning code, so tests can compare the service's answers with it.
"""

from __future__ import annotations

import random
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from google.protobuf.message import Message

from mercato.auth.events.v1 import events_pb2 as auth_events
from mercato.auth.v1 import auth_pb2
from mercato.catalog.events.v1 import events_pb2 as catalog_events
from mercato.orders.events.v1 import events_pb2 as order_events
from mercato.orders.v1 import orders_pb2
from mercato_analytics.convert import money, timestamp
from mercato_common.kafka import Envelope, new_envelope

__all__ = [
    "Expected",
    "Line",
    "Published",
    "order_cancelled",
    "order_failed",
    "order_fulfilled",
    "order_paid",
    "order_placed",
    "simulate",
    "stock_reserved",
    "user_registered",
]


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int
    unit_price: int

    @property
    def total(self) -> int:
        return self.quantity * self.unit_price


def _order_lines(lines: Sequence[Line], currency: str) -> list[order_events.OrderLine]:
    return [
        order_events.OrderLine(
            sku=line.sku,
            quantity=line.quantity,
            unit_price=money(currency, line.unit_price),
            line_total=money(currency, line.total),
        )
        for line in lines
    ]


def _envelope(source: str, subject: str, data: Message, when: datetime) -> Envelope:
    return new_envelope(data, source=source, subject=subject, time=when)


def order_placed(
    order_id: str, *, user_id: str, lines: Sequence[Line], currency: str, place_time: datetime
) -> Envelope:
    data = order_events.OrderPlaced(
        order_id=order_id,
        user_id=user_id,
        lines=_order_lines(lines, currency),
        total=money(currency, sum(line.total for line in lines)),
        place_time=timestamp(place_time),
    )
    return _envelope("orders", order_id, data, place_time)


def order_paid(
    order_id: str,
    *,
    user_id: str,
    lines: Sequence[Line],
    currency: str,
    place_time: datetime,
    pay_time: datetime,
) -> Envelope:
    data = order_events.OrderPaid(
        order_id=order_id,
        user_id=user_id,
        amount=money(currency, sum(line.total for line in lines)),
        lines=_order_lines(lines, currency),
        payment_id=f"pay-{order_id[:8]}",
        place_time=timestamp(place_time),
        pay_time=timestamp(pay_time),
    )
    return _envelope("orders", order_id, data, pay_time)


def order_cancelled(
    order_id: str,
    *,
    user_id: str,
    total: int,
    currency: str,
    after_payment: bool,
    place_time: datetime,
    cancel_time: datetime,
) -> Envelope:
    data = order_events.OrderCancelled(
        order_id=order_id,
        user_id=user_id,
        previous_state=(
            orders_pb2.ORDER_STATE_PAID if after_payment else orders_pb2.ORDER_STATE_CONFIRMED
        ),
        total=money(currency, total),
        reason="changed my mind",
        actor_id=user_id,
        place_time=timestamp(place_time),
        cancel_time=timestamp(cancel_time),
    )
    return _envelope("orders", order_id, data, cancel_time)


def order_fulfilled(
    order_id: str, *, user_id: str, place_time: datetime, fulfill_time: datetime
) -> Envelope:
    data = order_events.OrderFulfilled(
        order_id=order_id,
        user_id=user_id,
        shipment_reference="TRACK-1",
        actor_id="admin-1",
        place_time=timestamp(place_time),
        fulfill_time=timestamp(fulfill_time),
    )
    return _envelope("orders", order_id, data, fulfill_time)


def order_failed(
    order_id: str, *, user_id: str, place_time: datetime, fail_time: datetime
) -> Envelope:
    data = order_events.OrderFailed(
        order_id=order_id,
        user_id=user_id,
        previous_state=orders_pb2.ORDER_STATE_CONFIRMED,
        reason="stock reservation expired",
        place_time=timestamp(place_time),
        fail_time=timestamp(fail_time),
    )
    return _envelope("orders", order_id, data, fail_time)


def user_registered(user_id: str, *, register_time: datetime) -> Envelope:
    data = auth_events.UserRegistered(
        user_id=user_id, roles=[auth_pb2.ROLE_CUSTOMER], register_time=timestamp(register_time)
    )
    return _envelope("auth", user_id, data, register_time)


def stock_reserved(order_id: str, *, lines: Sequence[Line], reserve_time: datetime) -> Envelope:
    data = catalog_events.StockReserved(
        order_id=order_id,
        lines=[catalog_events.StockLine(sku=line.sku, quantity=line.quantity) for line in lines],
        expire_time=timestamp(reserve_time + timedelta(minutes=15)),
        reserve_time=timestamp(reserve_time),
    )
    return _envelope("catalog", order_id, data, reserve_time)


@dataclass(frozen=True, slots=True)
class Published:
    """One event to publish: its topic kind (``auth``, ``catalog``, ``orders``) and envelope."""

    source: str
    envelope: Envelope


@dataclass
class Expected:
    """Totals of a simulated stream, counted independently of the service's code."""

    placed: int = 0
    paid: int = 0
    cancelled: int = 0
    cancelled_after_payment: int = 0
    fulfilled: int = 0
    failed: int = 0
    new_users: int = 0
    revenue: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    refunds: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    units: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sku_units: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    sku_revenue: dict[tuple[str, str], int] = field(default_factory=lambda: defaultdict(int))
    first_time: datetime | None = None
    last_time: datetime | None = None

    def seen(self, when: datetime) -> None:
        self.first_time = when if self.first_time is None else min(self.first_time, when)
        self.last_time = when if self.last_time is None else max(self.last_time, when)


def simulate(
    orders: int,
    *,
    seed: int = 7,
    start: datetime | None = None,
    skus: int = 12,
    currencies: Sequence[str] = ("EUR", "USD"),
    users: int = 0,
    catalog_events: bool = True,
) -> tuple[list[Published], Expected]:
    """Events of ``orders`` orders (and ``users`` registrations) with their expected totals.

    Orders are placed a few seconds apart from ``start`` (default: two hours ago, whole
    minute); each is paid (80%), then fulfilled (60% of the paid), cancelled after payment
    (10%) or left; unpaid ones are cancelled (half) or failed.
    """
    rng = random.Random(seed)
    base = start or (datetime.now(UTC) - timedelta(hours=2)).replace(second=0, microsecond=0)
    out: list[Published] = []
    expected = Expected()

    def emit(source: str, envelope: Envelope, when: datetime) -> None:
        out.append(Published(source, envelope))
        expected.seen(when)

    for index in range(users):
        when = base + timedelta(seconds=7 * index)
        emit("auth", user_registered(str(uuid.uuid4()), register_time=when), when)
        expected.new_users += 1
    for index in range(orders):
        order_id = str(uuid.uuid4())
        user_id = f"user-{rng.randrange(50)}"
        currency = currencies[index % len(currencies)]
        lines = [
            Line(f"SKU-{sku:03d}", rng.randint(1, 4), rng.choice((199, 999, 1500, 4999)))
            for sku in rng.sample(range(skus), rng.randint(1, 3))
        ]
        total = sum(line.total for line in lines)
        placed_at = base + timedelta(seconds=3 * index, milliseconds=rng.randrange(1000))
        emit(
            "orders",
            order_placed(
                order_id, user_id=user_id, lines=lines, currency=currency, place_time=placed_at
            ),
            placed_at,
        )
        expected.placed += 1
        if catalog_events:
            out.append(
                Published("catalog", stock_reserved(order_id, lines=lines, reserve_time=placed_at))
            )
        # Paid (80%), then fulfilled, cancelled with a refund, or left; else cancelled or failed.
        cancel_at: datetime | None = None
        after_payment = False
        roll = rng.random()
        if roll < 0.8:
            paid_at = placed_at + timedelta(seconds=rng.randint(5, 400))
            paid = order_paid(
                order_id,
                user_id=user_id,
                lines=lines,
                currency=currency,
                place_time=placed_at,
                pay_time=paid_at,
            )
            emit("orders", paid, paid_at)
            expected.paid += 1
            expected.revenue[currency] += total
            expected.units[currency] += sum(line.quantity for line in lines)
            for line in lines:
                expected.sku_units[line.sku] += line.quantity
                expected.sku_revenue[(line.sku, currency)] += line.total
            after = rng.random()
            if after < 0.7:
                done_at = paid_at + timedelta(seconds=rng.randint(60, 3000))
                if after < 0.6:
                    fulfilled = order_fulfilled(
                        order_id, user_id=user_id, place_time=placed_at, fulfill_time=done_at
                    )
                    emit("orders", fulfilled, done_at)
                    expected.fulfilled += 1
                else:
                    cancel_at, after_payment = done_at, True
                    expected.cancelled_after_payment += 1
                    expected.refunds[currency] += total
        else:
            done_at = placed_at + timedelta(seconds=rng.randint(30, 900))
            if roll < 0.9:
                cancel_at = done_at
            else:
                failed = order_failed(
                    order_id, user_id=user_id, place_time=placed_at, fail_time=done_at
                )
                emit("orders", failed, done_at)
                expected.failed += 1
        if cancel_at is not None:
            cancelled = order_cancelled(
                order_id,
                user_id=user_id,
                total=total,
                currency=currency,
                after_payment=after_payment,
                place_time=placed_at,
                cancel_time=cancel_at,
            )
            emit("orders", cancelled, cancel_at)
            expected.cancelled += 1
    return out, expected
