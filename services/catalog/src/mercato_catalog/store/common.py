"""What the catalog's stores share: collections, clock, locks, index declarations, the outbox
write."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from mercato_catalog.store.locks import WriteLocks
from mercato_common.kafka.envelope import Envelope
from mercato_common.mongo import IndexSpec, bson_now
from mercato_common.outbox import outbox_fields, outbox_index_specs, with_outbox

__all__ = ["INDEXES", "RETIRED_INDEXES", "StoreContext", "as_utc", "hold_key", "utcnow"]

PRODUCTS = "products"
CATEGORIES = "categories"
RESERVATIONS = "reservations"

# Every index the catalog needs, created at start by ``ensure_indexes`` (idempotent, named).
# Plain and compound indexes only (no TTL, partial, sparse or text: FerretDB has none).
INDEXES: dict[str, list[IndexSpec]] = {
    PRODUCTS: [
        # Listing: state filter, keyset on _id (the SKU).
        IndexSpec.of("state_sku", "state", "_id"),
        # Category filter (multikey: the category and its ancestors).
        IndexSpec.of("category_path_sku", "category_path", "_id"),
        # Price range within one currency.
        IndexSpec.of("price", "price_currency", "price_minor"),
        # The orphan reaper reads the products marked holding (store/stock.py).
        IndexSpec.of("holding", "holding"),
        *outbox_index_specs(),
    ],
    CATEGORIES: [IndexSpec.of("parent", "parent_id")],
    RESERVATIONS: [
        # ListReservations (oldest first, keyset on create_time then _id).
        IndexSpec.of("create_time_id", "create_time", "_id"),
        # ... and a short creation range, one minute at a time. The minute leads here and below:
        # FerretDB serves a pushed-down equality from an index on the leading field only, and a
        # phase (HELD) holds every open saga while a minute holds those of that minute. Led by
        # the phase, each query read every held saga (3,335 rows, 6.7 ms of PostgreSQL per
        # query, seen after a bench run).
        IndexSpec.of("create_minute_phase", "create_minute", "phase"),
        # The sweeper: due expirations and stuck steps.
        IndexSpec.of("phase_expire", "phase", "expire_time"),
        IndexSpec.of("expire_minute_phase", "expire_minute", "phase"),
        IndexSpec.of("phase_update", "phase", "update_time"),
        IndexSpec.of("cleanup_due", "cleanup", "cleanup_after"),
        IndexSpec.of("cleanup_minute", "cleanup_minute"),
        *outbox_index_specs(),
    ],
}


# Indexes an earlier catalog declared, dropped at start where they are still there.
RETIRED_INDEXES: dict[str, list[str]] = {
    PRODUCTS: ["stock_reserved"],
    RESERVATIONS: ["phase_create_minute", "phase_expire_minute"],
}


# The catalog's clock: its times go to MongoDB, so they are read back unchanged.
utcnow = bson_now


def as_utc(value: Any) -> datetime:
    """A BSON date as read back (naive UTC unless the client is tz-aware) → aware UTC."""
    if not isinstance(value, datetime):
        raise TypeError(f"not a date: {value!r}")
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def hold_key(order_id: str) -> str:
    """The key of an order's entry in a product's ``holds``/``returns`` maps.

    Prefixed so that it is never empty, numeric-looking or an operator; order ids are
    validated UUIDs before they get here.
    """
    return "o_" + order_id.replace("-", "")


@dataclass
class StoreContext:
    """The database, the events topic and the write locks the stores share; built by
    ``app.py``."""

    db: AsyncDatabase[Any]
    topic: str
    locks: WriteLocks = field(default_factory=WriteLocks)
    # Told the collection after each write that stored events (app.py: its relay wakes up).
    on_events: Callable[[str], None] = field(default=lambda _collection: None)

    def announce(self, collection: str, events: Sequence[Envelope]) -> None:
        """A write with ``events`` landed in ``collection``."""
        if events:
            self.on_events(collection)

    @property
    def products(self) -> AsyncCollection[Any]:
        return self.db[PRODUCTS]

    @property
    def categories(self) -> AsyncCollection[Any]:
        return self.db[CATEGORIES]

    @property
    def reservations(self) -> AsyncCollection[Any]:
        return self.db[RESERVATIONS]

    async def insert_new(
        self,
        collection: str,
        doc: Mapping[str, Any],
        events: Sequence[Envelope] = (),
        now: datetime | None = None,
    ) -> bool:
        """Insert a new document with ``events`` in its outbox (written at ``now``); False when
        its ``_id`` is taken."""
        if events:
            doc = {**doc, **outbox_fields([(e, self.topic) for e in events], now=now)}
        try:
            async with self.locks.hold(collection, doc["_id"]):
                await self.db[collection].insert_one(dict(doc))
        except DuplicateKeyError:
            return False
        self.announce(collection, events)
        return True

    def with_events(
        self, update: Mapping[str, Any], events: Sequence[Envelope], now: datetime
    ) -> Mapping[str, Any]:
        """``update`` plus the outbox entries of ``events`` (the caller's choice), if any."""
        if not events:
            return update
        return with_outbox(update, [(event, self.topic) for event in events], now=now)
