"""Query results into response messages: every counter reaches its field of the same name."""

from __future__ import annotations

from datetime import UTC, datetime

from mercato_analytics.convert import funnel_to_proto, sales_bucket_to_proto
from mercato_analytics.domain import CurrencySales, Funnel, SalesBucket


def test_sales_bucket_to_proto_copies_every_counter() -> None:
    start = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    bucket = SalesBucket(
        start=start,
        orders_placed=1,
        orders_paid=2,
        orders_cancelled=3,
        orders_fulfilled=4,
        orders_failed=5,
        new_users=6,
        sales=(CurrencySales("EUR", revenue=700, refunds=80, units=9, orders_paid=2),),
    )
    message = sales_bucket_to_proto(bucket)
    assert message.start_time.ToDatetime(tzinfo=UTC) == start
    assert (
        message.orders_placed,
        message.orders_paid,
        message.orders_cancelled,
        message.orders_fulfilled,
        message.orders_failed,
        message.new_users,
    ) == (1, 2, 3, 4, 5, 6)
    [sales] = message.sales
    assert (sales.revenue.currency_code, sales.revenue.amount_minor) == ("EUR", 700)
    assert (sales.refunds.currency_code, sales.refunds.amount_minor) == ("EUR", 80)
    assert (sales.units, sales.orders_paid) == (9, 2)


def test_funnel_to_proto_copies_every_stage() -> None:
    message = funnel_to_proto(
        Funnel(placed=6, paid=5, fulfilled=3, cancelled=2, cancelled_after_payment=1, failed=1)
    )
    assert (
        message.placed,
        message.paid,
        message.fulfilled,
        message.cancelled,
        message.cancelled_after_payment,
        message.failed,
    ) == (6, 5, 3, 2, 1, 1)
