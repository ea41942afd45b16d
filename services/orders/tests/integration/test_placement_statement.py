"""The placed order's one statement, on real PostgreSQL: all of it, or nothing at all; and the
housekeeping of the idempotency keys it claims."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from importlib.resources import files

import pytest
import pytest_asyncio

from mercato_common.postgres import Database
from mercato_orders import publish
from mercato_orders.domain.model import Money, Order, OrderLine
from mercato_orders.domain.rules import new_order
from mercato_orders.store import OrdersStore, new_token
from mercato_orders.store.keys import DELETE_EXPIRED_KEYS

pytestmark = pytest.mark.integration


@pytest_asyncio.fixture(loop_scope="session")
async def store(postgres_dsn: str) -> AsyncIterator[OrdersStore]:
    database = Database(
        postgres_dsn,
        logger_name="mercato_orders.store",
        migrations=files("mercato_orders.store") / "migrations",
        outbox_migration=2,
    )
    await database.start()
    try:
        yield OrdersStore(database, events_topic="mercato.orders.events.v1")
    finally:
        await database.stop()


async def _claimed(store: OrdersStore, user_id: str, key: str) -> tuple[str, str]:
    owner, order_id = new_token(), str(uuid.uuid4())
    async with store.read() as tx:
        row = await tx.keys.claim(
            user_id=user_id,
            key=key,
            fingerprint="f",
            order_id=order_id,
            owner=owner,
            lease=timedelta(seconds=30),
        )
    assert row is not None
    assert row.inserted
    return owner, order_id


def _order(order_id: str, user_id: str, key: str) -> Order:
    now = datetime.now(UTC)
    line = OrderLine("SKU-1", 2, "Cup", Money("EUR", 450))
    return new_order(
        order_id=order_id,
        user_id=user_id,
        idempotency_key=key,
        lines=[line],
        total=Money("EUR", 900),
        accepted_at=now,
        confirmed_at=now,
    )


async def _rows(store: OrdersStore, order_id: str) -> tuple[int, int, int, str | None]:
    async with store.read() as tx:
        raw = tx.conn
        orders = await raw.fetchval("SELECT count(*) FROM orders WHERE id = $1::uuid", order_id)
        history = await raw.fetchval(
            "SELECT count(*) FROM order_transitions WHERE order_id = $1::uuid", order_id
        )
        events = await raw.fetchval("SELECT count(*) FROM outbox WHERE key = $1", order_id)
        state = await raw.fetchval(
            "SELECT state FROM idempotency_keys WHERE order_id = $1::uuid", order_id
        )
    return orders, history, events, state


async def test_the_owner_writes_key_order_history_and_event_in_one_statement(
    store: OrdersStore,
) -> None:
    owner, order_id = await _claimed(store, "user-1", "key-1")
    order = _order(order_id, "user-1", "key-1")
    async with store.read() as tx:
        assert await tx.placements.confirm(
            order, owner=owner, key_ttl=timedelta(hours=1), event=publish.order_placed(order)
        )
        assert not tx.conn.is_in_transaction()
    assert await _rows(store, order_id) == (1, 2, 1, "DONE")
    async with store.read() as tx:
        stored = await tx.orders.get(order_id)
    assert stored is not None
    assert (stored.state, stored.total, stored.lines, stored.history) == (
        order.state,
        order.total,
        order.lines,
        order.history,
    )


async def test_a_key_no_longer_owned_writes_nothing(store: OrdersStore) -> None:
    _, order_id = await _claimed(store, "user-2", "key-2")
    order = _order(order_id, "user-2", "key-2")
    async with store.read() as tx:
        assert not await tx.placements.confirm(
            order,
            owner=new_token(),  # another create took the key over
            key_ttl=timedelta(hours=1),
            event=publish.order_placed(order),
        )
    assert await _rows(store, order_id) == (0, 0, 0, "PENDING")


async def test_expired_keys_are_deleted_and_found_through_the_expiry_index(
    store: OrdersStore,
) -> None:
    """Housekeeping deletes the DONE keys past their retention and no other, and finds them by
    the expiry index's condition: with a volatile bound (``clock_timestamp()``) PostgreSQL
    walks the index over every kept key, a cost that grows with the keys kept."""
    user = f"housekeeping-{uuid.uuid4()}"
    async with store.write() as tx:
        await tx.conn.executemany(
            "INSERT INTO idempotency_keys (user_id, key, fingerprint, order_id, state, owner,"
            " lease_until, expire_time) VALUES ($1, $2, 'f', gen_random_uuid(), 'DONE',"
            " gen_random_uuid(), now(), now() + $3::interval)",
            [(user, "expired", timedelta(hours=-1)), (user, "kept", timedelta(hours=24))],
        )
    async with store.write() as tx:
        deleted = await tx.keys.delete_expired(limit=10_000)
        plan = "\n".join(
            row[0] for row in await tx.conn.fetch(f"EXPLAIN {DELETE_EXPIRED_KEYS}", 100, None)
        )
        left = await tx.conn.fetch("SELECT key FROM idempotency_keys WHERE user_id = $1", user)
    assert deleted >= 1
    assert [row["key"] for row in left] == ["kept"]
    assert re.search(r"Index Cond: \(expire_time < ", plan), plan
