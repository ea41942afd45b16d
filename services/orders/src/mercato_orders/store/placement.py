"""A placed order, written in one statement.

The idempotency key completed (only while the caller still owns it), the order row, its history
and its ``OrderPlaced`` event in the outbox: one statement of data-modifying CTEs, atomic as a
transaction is, in one round trip instead of six (BEGIN, four writes, COMMIT). Every insert reads
from ``completed``, so when the key is no longer the caller's nothing at all is written.
"""

from __future__ import annotations

from datetime import timedelta

from mercato_common.kafka.envelope import Envelope
from mercato_common.outbox import Outbox
from mercato_common.postgres import Connection
from mercato_orders.domain.model import Order
from mercato_orders.store.keys import COMPLETE_KEY
from mercato_orders.store.orders import (
    ORDER_COLUMNS,
    ORDER_VALUES,
    TRANSITION_COLUMNS,
    TRANSITION_ROWS,
    history_arrays,
    numbered,
    order_values,
)

__all__ = ["Placements"]

# Parameters: the key's 5 ($1-$5, the order id is $4), the order's 15 ($6-$20), the history's 6
# arrays ($21-$26), the event's 6 ($27-$32). Built from constants only: no value is formatted in.
_PLACE = f"""
WITH completed AS ({numbered(COMPLETE_KEY, 1)} RETURNING order_id),
placed AS (
    INSERT INTO orders ({ORDER_COLUMNS})
    SELECT {numbered(ORDER_VALUES, 6)} FROM completed
    RETURNING id
),
history AS (
    INSERT INTO order_transitions ({TRANSITION_COLUMNS})
    SELECT placed.id, {numbered(TRANSITION_ROWS, 21)}
    CROSS JOIN placed
),
announced AS ({Outbox.insert_from("placed", first_param=27)})
SELECT count(*) FROM completed
"""  # noqa: S608


class Placements:
    def __init__(self, conn: Connection, outbox: Outbox) -> None:
        self._conn = conn
        self._outbox = outbox

    async def confirm(
        self, order: Order, *, owner: str, key_ttl: timedelta, event: Envelope
    ) -> bool:
        """Complete the order's key and write the order with ``event``; False (and nothing
        written) when the key is no longer ``owner``'s."""
        completed: int = await self._conn.fetchval(
            _PLACE,
            order.user_id,
            order.idempotency_key,
            owner,
            order.id,
            key_ttl,
            *order_values(order),
            *history_arrays(order.history, start=0),
            *self._outbox.values(event),
        )
        return completed == 1
