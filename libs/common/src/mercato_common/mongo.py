"""MongoDB plumbing: the store part every MongoDB service uses, and idempotent index creation.

Services declare their indexes as data and call :func:`ensure_indexes` at start. Every index has
an explicit name, so a changed definition is detected (and reported) instead of silently living
next to the old one. Stay within what both MongoDB 7 and FerretDB support: plain and compound
indexes, ``unique``; no TTL, partial, sparse or text indexes.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymongo import AsyncMongoClient, monitoring
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import OperationFailure

from mercato_common.clock import utcnow
from mercato_common.telemetry import instrument_client

if TYPE_CHECKING:
    from mercato_common.db_metrics import DbOperationMetrics
    from mercato_common.settings import MongoSettings

__all__ = [
    "DUPLICATE_KEY",
    "IndexConflictError",
    "IndexSpec",
    "MongoCommandMetrics",
    "MongoPoolMonitor",
    "MongoStore",
    "bson_now",
    "ensure_indexes",
]

log = logging.getLogger(__name__)

# The server's code of a write refused for a duplicate key (each entry of a bulk write's
# ``writeErrors`` carries its own).
DUPLICATE_KEY = 11000
# Server error codes for "an index with this name/keys exists with another definition".
_CONFLICT_CODES = frozenset({85, 86})
# IndexNotFound: dropping an index that is not (or no longer) there.
_INDEX_NOT_FOUND = 27

# Options FerretDB rejects or ignores; refused here so code that passes locally runs in prod too.
_UNPORTABLE_OPTIONS = frozenset(
    {"expireAfterSeconds", "partialFilterExpression", "sparse", "weights", "default_language"}
)


def bson_now() -> datetime:
    """Now in UTC, truncated to milliseconds: what BSON dates keep, so a time written equals the
    time read back."""
    now = utcnow()
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


class IndexConflictError(RuntimeError):
    """An index exists under the same name (or keys) with a different definition.

    Changing an index is a migration decision (drop, then create, maybe with a new name), never
    something to do implicitly at start-up.
    """


@dataclass(frozen=True, slots=True)
class IndexSpec:
    """One named index: ``keys`` as ``[(field, 1 | -1), ...]``."""

    name: str
    keys: tuple[tuple[str, int], ...]
    unique: bool = False
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("index name must not be empty")
        if not self.keys:
            raise ValueError(f"index {self.name}: keys must not be empty")
        for key, direction in self.keys:
            if not key or direction not in (1, -1):
                raise ValueError(f"index {self.name}: bad key {key!r}: {direction!r}")
        bad = _UNPORTABLE_OPTIONS.intersection(self.options)
        if bad:
            raise ValueError(f"index {self.name}: options not supported by FerretDB: {sorted(bad)}")
        if "name" in self.options or "unique" in self.options:
            raise ValueError(f"index {self.name}: pass name/unique as fields, not options")

    @classmethod
    def of(cls, name: str, *keys: tuple[str, int] | str, unique: bool = False) -> IndexSpec:
        """``IndexSpec.of("by_sku", "sku", unique=True)``; a bare field name means ascending."""
        normalized = tuple((k, 1) if isinstance(k, str) else k for k in keys)
        return cls(name=name, keys=normalized, unique=unique)

    def matches(self, info: Mapping[str, Any]) -> bool:
        """Whether an entry of ``index_information()`` is this index."""
        existing = tuple((str(k), int(v)) for k, v in info.get("key", ()))
        return existing == self.keys and bool(info.get("unique", False)) == self.unique


async def ensure_indexes(
    db: AsyncDatabase[Any],
    specs: Mapping[str, Sequence[IndexSpec]],
    retired: Mapping[str, Sequence[str]] | None = None,
) -> list[str]:
    """Create the missing indexes of ``{collection: [IndexSpec, ...]}``; the names created.

    Existing identical indexes are left alone, so this is safe at every start and from several
    replicas at once. An index with the same name but another definition raises
    :class:`IndexConflictError`. ``retired`` names, per collection, indexes an earlier version
    declared: those still there are dropped (each is written on every insert and update); other
    indexes not in ``specs`` are not touched.
    """
    created: list[str] = []
    retired = retired or {}
    for collection_name, indexes in specs.items():
        names = [spec.name for spec in indexes]
        if len(set(names)) != len(names):
            raise ValueError(f"{collection_name}: duplicate index names in {names}")
        dropping = set(retired.get(collection_name, ()))
        if both := dropping.intersection(names):
            raise ValueError(f"{collection_name}: declared and retired: {sorted(both)}")
        collection = db[collection_name]
        existing: Mapping[str, Any] = await collection.index_information()
        for name in sorted(dropping.intersection(existing)):
            try:
                await collection.drop_index(name)
            except OperationFailure as exc:
                if exc.code != _INDEX_NOT_FOUND:  # another replica dropped it first
                    raise
            log.info("dropped retired index %s.%s", collection_name, name)
        for spec in indexes:
            info = existing.get(spec.name)
            if info is not None:
                if not spec.matches(info):
                    raise IndexConflictError(
                        f"{collection_name}.{spec.name} exists as {dict(info)!r}, "
                        f"declared as keys={list(spec.keys)!r} unique={spec.unique}"
                    )
                continue
            try:
                await collection.create_index(
                    list(spec.keys), name=spec.name, unique=spec.unique, **dict(spec.options)
                )
            except OperationFailure as exc:
                if exc.code in _CONFLICT_CODES:
                    raise IndexConflictError(
                        f"{collection_name}.{spec.name}: {exc.details or exc}"
                    ) from exc
                raise
            log.info("created index %s.%s", collection_name, spec.name)
            created.append(f"{collection_name}.{spec.name}")
    return created


class MongoStore:
    """The service's MongoDB client and database as a lifecycle part.

    ``start`` checks the connection (``ping``), runs ``on_connect`` (a service's own detection,
    such as catalog's write-lock mode) and, unless ``migrate_on_start`` is off, creates the
    declared indexes; ``stop`` closes the client. :meth:`ping` is the health probe.
    """

    def __init__(
        self,
        settings: MongoSettings,
        *,
        appname: str,
        indexes: Mapping[str, Sequence[IndexSpec]],
        event_listeners: Sequence[Any] = (),
        on_connect: Callable[[AsyncMongoClient[Any]], Awaitable[None]] | None = None,
        migrate_on_start: bool = True,
        retired_indexes: Mapping[str, Sequence[str]] | None = None,
    ) -> None:
        instrument_client("pymongo")  # before the client: PyMongo's listeners are global
        self.client: AsyncMongoClient[Any] = AsyncMongoClient(
            settings.mongo_uri,
            event_listeners=list(event_listeners),
            tz_aware=True,
            serverSelectionTimeoutMS=settings.mongo_timeout_ms,
            connectTimeoutMS=settings.mongo_timeout_ms,
            socketTimeoutMS=settings.mongo_operation_timeout_ms,
            maxPoolSize=settings.mongo_max_pool_size,
            appname=appname,
        )
        self.db: AsyncDatabase[Any] = self.client[settings.mongo_database]
        self._indexes = indexes
        self._retired_indexes = retired_indexes
        self._on_connect = on_connect
        self._migrate_on_start = migrate_on_start

    async def ping(self) -> None:
        await self.client.admin.command("ping")

    async def migrate(self) -> list[str]:
        """Create the missing indexes and drop the retired ones; the names created."""
        return await ensure_indexes(self.db, self._indexes, self._retired_indexes)

    async def start(self) -> None:
        await self.ping()
        if self._on_connect is not None:
            await self._on_connect(self.client)
        created = await self.migrate() if self._migrate_on_start else []
        log.info("mongodb ready", extra={"indexes_created": created})

    async def stop(self) -> None:
        await self.client.close()


class MongoPoolMonitor(monitoring.ConnectionPoolListener):
    """Counts a MongoDB client's pooled connections from PyMongo's connection-pool events.

    Pass it to the client (``AsyncMongoClient(..., event_listeners=[monitor])``): PyMongo has
    no public call that tells how many connections are checked out, but it announces every
    creation, close, check-out and check-in.
    """

    def __init__(self) -> None:
        self.open = 0
        self.checked_out = 0

    @property
    def used(self) -> int:
        return max(self.checked_out, 0)

    @property
    def idle(self) -> int:
        return max(self.open - self.checked_out, 0)

    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        self.open += 1

    def connection_closed(self, event: monitoring.ConnectionClosedEvent) -> None:
        self.open -= 1

    def connection_checked_out(self, event: monitoring.ConnectionCheckedOutEvent) -> None:
        self.checked_out += 1

    def connection_checked_in(self, event: monitoring.ConnectionCheckedInEvent) -> None:
        self.checked_out -= 1

    # The remaining events change neither count.
    def pool_created(self, event: monitoring.PoolCreatedEvent) -> None:
        return None

    def pool_ready(self, event: monitoring.PoolReadyEvent) -> None:
        return None

    def pool_cleared(self, event: monitoring.PoolClearedEvent) -> None:
        return None

    def pool_closed(self, event: monitoring.PoolClosedEvent) -> None:
        return None

    def connection_ready(self, event: monitoring.ConnectionReadyEvent) -> None:
        return None

    def connection_check_out_started(
        self, event: monitoring.ConnectionCheckOutStartedEvent
    ) -> None:
        return None

    def connection_check_out_failed(self, event: monitoring.ConnectionCheckOutFailedEvent) -> None:
        return None


class MongoCommandMetrics(monitoring.CommandListener):
    """Every command of a client, counted and timed (PyMongo's command monitoring) in
    :class:`~mercato_common.db_metrics.DbOperationMetrics`."""

    def __init__(self, metrics: DbOperationMetrics) -> None:
        self._observe = metrics.duration.labels

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        return None

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self._observe("mongodb", event.command_name).observe(event.duration_micros / 1e6)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        self._observe("mongodb", event.command_name).observe(event.duration_micros / 1e6)
