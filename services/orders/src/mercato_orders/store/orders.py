"""Orders and their transitions in PostgreSQL.

An order row is written once when placed and then only through :meth:`Orders.save`, which
checks the version read under ``SELECT ... FOR UPDATE`` (:meth:`Orders.get` with ``lock``) and
appends the new history entries; the service writes the change's event into the outbox in the
same transaction, after the row lock, so events of one order are in order in the outbox.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from mercato_common.postgres import Connection
from mercato_orders.domain.model import (
    Money,
    Order,
    OrderLine,
    OrderState,
    StateChange,
)
from mercato_orders.domain.rules import OrderFilter, PageToken, UserHoldings

__all__ = ["Orders", "StaleOrderError"]


class StaleOrderError(RuntimeError):
    """The order changed between read and write (a bug: writes lock the row first)."""


_SELECT = """
SELECT id::text AS id, user_id, state, currency_code, total_minor, lines::text AS lines,
       payment_id, state_reason, shipment_reference, idempotency_key, release_pending,
       refund_pending, version, create_time, update_time
FROM orders
"""


def _lines_json(lines: Sequence[OrderLine]) -> str:
    return json.dumps(
        [
            {
                "sku": line.sku,
                "quantity": line.quantity,
                "name": line.product_name,
                "unit_price_minor": line.unit_price.amount_minor,
            }
            for line in lines
        ],
        separators=(",", ":"),
    )


ORDER_COLUMNS = (
    "id, user_id, state, currency_code, total_minor, lines, payment_id, state_reason, "
    "shipment_reference, idempotency_key, release_pending, refund_pending, version, "
    "create_time, update_time"
)
# The values of ORDER_COLUMNS as the parameters ${n} to ${n + 14} (order_values), typed: in an
# INSERT ... SELECT a parameter's type is not inferred from its column.
ORDER_VALUES = (
    "${n}::uuid, ${n1}::text, ${n2}::text, ${n3}::text, ${n4}::bigint, ${n5}::jsonb, ${n6}::text, "
    "${n7}::text, ${n8}::text, ${n9}::text, ${n10}::boolean, ${n11}::boolean, ${n12}::integer, "
    "${n13}::timestamptz, ${n14}::timestamptz"
)
TRANSITION_COLUMNS = "order_id, seq, from_state, to_state, time, actor, reason"
# The rows after order_id, from the six arrays ${n} to ${n + 5} (history_arrays).
TRANSITION_ROWS = (
    "s, f, t, ti, a, r FROM unnest(${n}::int[], ${n1}::text[], ${n2}::text[], "
    "${n3}::timestamptz[], ${n4}::text[], ${n5}::text[]) AS x(s, f, t, ti, a, r)"
)


def numbered(template: str, n: int) -> str:
    """``template`` with ``{n}``, ``{n1}``, ... replaced by parameter numbers from ``n``."""
    return template.format(n=n, **{f"n{i}": n + i for i in range(1, 15)})


def order_values(order: Order) -> tuple[Any, ...]:
    """The parameters of ORDER_VALUES."""
    return (
        order.id,
        order.user_id,
        order.state.value,
        order.total.currency_code,
        order.total.amount_minor,
        _lines_json(order.lines),
        order.payment_id,
        order.state_reason,
        order.shipment_reference,
        order.idempotency_key,
        order.release_pending,
        order.refund_pending,
        order.version,
        order.create_time,
        order.update_time,
    )


def history_arrays(changes: Sequence[StateChange], *, start: int) -> tuple[list[Any], ...]:
    """The parameters of TRANSITION_ROWS: the history entries from sequence number ``start``."""
    return (
        [start + i for i in range(len(changes))],
        [c.from_state.value if c.from_state else None for c in changes],
        [c.to_state.value for c in changes],
        [c.time for c in changes],
        [c.actor for c in changes],
        [c.reason for c in changes],
    )


def _order(record: Any, history: Sequence[StateChange]) -> Order:
    currency = record["currency_code"]
    lines = tuple(
        OrderLine(
            sku=item["sku"],
            quantity=int(item["quantity"]),
            product_name=item["name"],
            unit_price=Money(currency, int(item["unit_price_minor"])),
        )
        for item in json.loads(record["lines"])
    )
    return Order(
        id=record["id"],
        user_id=record["user_id"],
        state=OrderState(record["state"]),
        lines=lines,
        total=Money(currency, int(record["total_minor"])),
        create_time=record["create_time"],
        update_time=record["update_time"],
        history=tuple(history),
        payment_id=record["payment_id"],
        state_reason=record["state_reason"],
        shipment_reference=record["shipment_reference"],
        idempotency_key=record["idempotency_key"],
        release_pending=record["release_pending"],
        refund_pending=record["refund_pending"],
        version=record["version"],
    )


def _change(record: Any) -> StateChange:
    return StateChange(
        from_state=OrderState(record["from_state"]) if record["from_state"] else None,
        to_state=OrderState(record["to_state"]),
        time=record["time"],
        actor=record["actor"],
        reason=record["reason"],
    )


class Orders:
    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    async def _insert_history(
        self, order_id: str, changes: Sequence[StateChange], *, start: int
    ) -> None:
        if not changes:
            return
        await self._conn.execute(
            f"""
            INSERT INTO order_transitions ({TRANSITION_COLUMNS})
            SELECT $1::uuid, {numbered(TRANSITION_ROWS, 2)}
            """,
            order_id,
            *history_arrays(changes, start=start),
        )

    async def get(self, order_id: str, *, lock: bool = False) -> Order | None:
        sql = _SELECT + "WHERE id = $1::uuid" + (" FOR UPDATE" if lock else "")
        record = await self._conn.fetchrow(sql, order_id)
        if record is None:
            return None
        history = await self._history([order_id])
        return _order(record, history.get(order_id, ()))

    async def _history(self, order_ids: list[str]) -> dict[str, list[StateChange]]:
        records = await self._conn.fetch(
            "SELECT order_id::text AS order_id, from_state, to_state, time, actor, reason "
            "FROM order_transitions WHERE order_id = ANY($1::uuid[]) ORDER BY order_id, seq",
            order_ids,
        )
        history: dict[str, list[StateChange]] = defaultdict(list)
        for record in records:
            history[record["order_id"]].append(_change(record))
        return history

    async def save(self, before: Order, after: Order) -> None:
        """Write ``after`` over ``before`` (read with ``lock``) and its new history entries."""
        status = await self._conn.execute(
            """
            UPDATE orders SET state = $3, payment_id = $4, state_reason = $5,
                shipment_reference = $6, release_pending = $7, refund_pending = $8,
                version = $9, update_time = $10
            WHERE id = $1::uuid AND version = $2
            """,
            after.id,
            before.version,
            after.state.value,
            after.payment_id,
            after.state_reason,
            after.shipment_reference,
            after.release_pending,
            after.refund_pending,
            after.version,
            after.update_time,
        )
        if status != "UPDATE 1":
            raise StaleOrderError(f"order {after.id} changed concurrently")
        new = after.history[len(before.history) :]
        await self._insert_history(after.id, new, start=len(before.history))

    async def list_orders(
        self, flt: OrderFilter, after: PageToken | None, limit: int
    ) -> list[Order]:
        """Up to ``limit`` orders matching ``flt``, newest first, after ``after``."""
        where: list[str] = []
        args: list[Any] = []

        def arg(value: Any) -> str:
            args.append(value)
            return f"${len(args)}"

        if flt.user_id is not None:
            where.append(f"user_id = {arg(flt.user_id)}")
        if flt.state is not None:
            where.append(f"state = {arg(flt.state.value)}")
        if flt.created_after is not None:
            where.append(f"create_time >= {arg(flt.created_after)}")
        if flt.created_before is not None:
            where.append(f"create_time < {arg(flt.created_before)}")
        if after is not None:
            where.append(
                f"(create_time, id) < ({arg(after.create_time)}, {arg(after.order_id)}::uuid)"
            )
        sql = _SELECT
        if where:
            sql += "WHERE " + " AND ".join(where)
        sql += f" ORDER BY create_time DESC, id DESC LIMIT {arg(limit)}"
        records = await self._conn.fetch(sql, *args)
        history = await self._history([r["id"] for r in records]) if records else {}
        return [_order(r, history.get(r["id"], ())) for r in records]

    async def owed(self, limit: int) -> list[Order]:
        """Orders owing a stock release or a refund, oldest change first."""
        records = await self._conn.fetch(
            _SELECT + "WHERE release_pending OR refund_pending ORDER BY update_time LIMIT $1",
            limit,
        )
        return [_order(r, ()) for r in records]

    async def settle(self, order_id: str, *, released: bool, refunded: bool) -> None:
        """Clear what was owed and is now done."""
        await self._conn.execute(
            """
            UPDATE orders SET
                release_pending = release_pending AND NOT $2,
                refund_pending = refund_pending AND NOT $3
            WHERE id = $1::uuid
            """,
            order_id,
            released,
            refunded,
        )

    async def holdings(self, user_id: str, skus: Sequence[str]) -> UserHoldings:
        """What the user's unpaid orders hold (units of ``skus``), and their other creates."""
        record = await self._conn.fetchrow(
            """
            SELECT
                (SELECT count(*) FROM orders
                 WHERE user_id = $1 AND state = 'CONFIRMED') AS open_orders,
                (SELECT count(*) FROM idempotency_keys
                 WHERE user_id = $1 AND state = 'PENDING') AS creating,
                (SELECT coalesce(jsonb_object_agg(sku, units), '{}'::jsonb) FROM (
                    SELECT line->>'sku' AS sku, sum((line->>'quantity')::int) AS units
                    FROM orders, jsonb_array_elements(lines) AS line
                    WHERE user_id = $1 AND state = 'CONFIRMED' AND line->>'sku' = ANY($2::text[])
                    GROUP BY 1
                ) AS held) AS units
            """,
            user_id,
            list(skus),
        )
        if record is None:  # an aggregate always answers one row
            return UserHoldings(open_orders=0, creates_in_progress=0, units={})
        units = record["units"]
        if isinstance(units, str):
            units = json.loads(units)
        return UserHoldings(
            open_orders=int(record["open_orders"]),
            creates_in_progress=int(record["creating"]),
            units={str(sku): int(count) for sku, count in units.items()},
        )

    async def states(self, order_ids: list[str]) -> dict[str, OrderState]:
        records = await self._conn.fetch(
            "SELECT id::text AS id, state FROM orders WHERE id = ANY($1::uuid[])",
            order_ids,
        )
        return {r["id"]: OrderState(r["state"]) for r in records}

    async def confirmed_before(self, when: datetime, limit: int, after: str | None) -> list[Order]:
        """CONFIRMED orders placed before ``when``, oldest first (by id after ``after``)."""
        records = await self._conn.fetch(
            _SELECT
            + "WHERE state = 'CONFIRMED' AND create_time < $1 "
            + "AND ($3::uuid IS NULL OR id > $3::uuid) ORDER BY id LIMIT $2",
            when,
            limit,
            after,
        )
        return [_order(r, ()) for r in records]
