"""The MongoDB outbox: events ride in the aggregate document, in the same single-document write.

Without multi-document transactions the only atomic unit is one document, so an aggregate keeps
its unpublished events in an ``outbox`` array field, written by the same ``update_one`` (or
``insert_one``) as the state change. Build that write with :func:`with_outbox` (merges into your
own ``$set``/``$inc``/...) or :func:`outbox_fields` (for a new document)::

    update = with_outbox({"$inc": {"stock": -qty}, "$set": {"updated_at": now}},
                         [(envelope, "catalog.stock")])
    await products.update_one({"_id": sku, "stock": {"$gte": qty}}, update)

Fields kept on the aggregate document (names in the constants below):

* ``outbox``: the pending events (id, topic, key, type, payload, headers, created_at);
* ``outbox_pending``: True while the array may hold events (what the relay queries, indexed);
* ``outbox_write_id``: a fresh random value set by every write that adds events; the relay clears
  the array only if it is still the one it read (a version check without array operators
  in filters, and without the ABA problem a counter would have);
* ``outbox_pending_since``: the oldest pending write (``$min``), for the age gauge and ordering.

:class:`MongoOutboxRelay` takes a lease on each pending document it publishes (a row in a side
collection, ``<collection>_outbox_leases``, created by an atomic insert), so several relays do not
publish one document at the same time and per-aggregate order holds. A batch costs five round
trips whatever its size (the candidates, one unordered insert of their leases, one read of the
leased documents, one bulk write of the acknowledgements, one delete of the leases): it publishes
the documents' events, waits for every acknowledgement, then removes exactly those events from
each document with one update each (all in the bulk write): the whole array if
``outbox_write_id`` is unchanged, else ``$pullAll`` of the published elements (a second bulk
write, only when some document changed since it was read).
A relay that dies holding a lease only delays the document until the lease expires; its events
are published again then (duplicates possible, losses not).

The relay writes the aggregate document once per publication (the removal) and never otherwise,
holding the service's write guards of all the batch's documents (``write_guard``) meanwhile:
FerretDB 1.x executes an update as an unlocked read-modify-write of the whole document, so any
write racing another on the same document can undo it. With this design such a race either
re-adds already published events (a duplicate) or undoes a service write together with the
events it added (FerretDB's lost update, not an outbox loss); on MongoDB updates are atomic and
neither happens. Everything used works on MongoDB 7 and FerretDB: ``$push``/``$each``,
``$pullAll``, ``$min``, unique ``_id`` inserts; no transactions or change streams.

Do not delete an aggregate document while ``outbox_pending`` is true: its events would go with it.
"""

from __future__ import annotations

import contextlib
import logging
import uuid
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from pymongo import UpdateOne
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, OperationFailure

from mercato_common.kafka.backoff import Backoff
from mercato_common.kafka.envelope import Envelope
from mercato_common.kafka.producer import EventProducer
from mercato_common.mongo import DUPLICATE_KEY, IndexSpec, bson_now
from mercato_common.outbox._base import OutboxMessage, OutboxRelay, event_headers

__all__ = [
    "F_OUTBOX",
    "F_PENDING",
    "F_PENDING_SINCE",
    "F_WRITE_ID",
    "MongoOutboxRelay",
    "outbox_event",
    "outbox_fields",
    "outbox_index_specs",
    "with_outbox",
]

log = logging.getLogger("mercato_common.outbox")

F_OUTBOX = "outbox"
F_PENDING = "outbox_pending"
F_WRITE_ID = "outbox_write_id"
F_PENDING_SINCE = "outbox_pending_since"
_FIELDS = (F_OUTBOX, F_PENDING, F_WRITE_ID, F_PENDING_SINCE)

EventInput = tuple[Envelope, str] | Mapping[str, Any]


def _write_id() -> str:
    return uuid.uuid4().hex


def outbox_event(
    envelope: Envelope,
    topic: str,
    *,
    headers: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """One element of the ``outbox`` array; captures the current trace context into headers."""
    if not topic:
        raise ValueError("topic must not be empty")
    uuid.UUID(envelope.id)  # a malformed id would defeat the consumers' deduplication
    stored_headers = event_headers(envelope, headers)
    for name in stored_headers:
        if not name or name.startswith("$") or "." in name:
            raise ValueError(f"header name not storable as a document key: {name!r}")
    return {
        "id": envelope.id,
        "topic": topic,
        "key": envelope.subject or None,
        "type": envelope.type,
        "payload": envelope.SerializeToString(),
        "headers": stored_headers,
        "created_at": now if now is not None else bson_now(),
    }


def _events(events: Sequence[EventInput], now: datetime) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for event in events:
        if isinstance(event, tuple):
            envelope, topic = event
            out.append(outbox_event(envelope, topic, now=now))
        else:
            out.append(dict(event))
    if not out:
        raise ValueError("no events")
    return out


def with_outbox(
    update: Mapping[str, Any],
    events: Sequence[EventInput],
    *,
    now: datetime | None = None,
) -> dict[str, Any]:
    """``update`` (an update document with operators) plus the operators that enqueue ``events``.

    ``events`` are ``(envelope, topic)`` pairs or elements made by :func:`outbox_event`. Raises if
    ``update`` already touches an outbox field. The result is a new dict; ``update`` is unchanged.
    """
    when = now if now is not None else bson_now()
    merged: dict[str, Any] = {}
    for operator, fields in update.items():
        if not operator.startswith("$") or not isinstance(fields, Mapping):
            raise ValueError(f"not an update operator: {operator!r} (pass an operator document)")
        for name in fields:
            if name.split(".", 1)[0] in _FIELDS:
                raise ValueError(f"{operator} must not touch the outbox field {name!r}")
        merged[operator] = dict(fields)
    merged.setdefault("$push", {})[F_OUTBOX] = {"$each": _events(events, when)}
    merged.setdefault("$set", {}).update({F_PENDING: True, F_WRITE_ID: _write_id()})
    merged.setdefault("$min", {})[F_PENDING_SINCE] = when
    return merged


def outbox_fields(events: Sequence[EventInput], *, now: datetime | None = None) -> dict[str, Any]:
    """The outbox fields of a new document holding ``events``: ``{**doc, **outbox_fields(...)}``."""
    when = now if now is not None else bson_now()
    return {
        F_OUTBOX: _events(events, when),
        F_PENDING: True,
        F_WRITE_ID: _write_id(),
        F_PENDING_SINCE: when,
    }


def outbox_index_specs() -> list[IndexSpec]:
    """The index the relay's claim query uses; add it to the collection's ``ensure_indexes``."""
    return [IndexSpec.of("outbox_pending", F_PENDING, F_PENDING_SINCE)]


class MongoOutboxRelay(OutboxRelay):
    """Publishes the embedded outboxes of one collection; safe to run in every replica.

    ``batch_size`` bounds the documents taken per cycle. ``lease`` must comfortably exceed
    ``publish_timeout`` (a lease that expires mid-publish lets another relay publish the same
    events again, and reorder them). Leases compare the relays' wall clocks, so keep them in sync.
    """

    def __init__(
        self,
        collection: AsyncCollection[Any],
        producer: EventProducer,
        *,
        batch_size: int = 100,
        poll_interval: float = 1.0,
        publish_timeout: float = 30.0,
        lease: timedelta = timedelta(seconds=90),
        lease_collection: str | None = None,
        backoff: Backoff | None = None,
        relay_id: str | None = None,
        housekeeping_interval: float = 15.0,
        registry: CollectorRegistry = REGISTRY,
        write_guard: Callable[[Any], AbstractAsyncContextManager[Any]] | None = None,
    ) -> None:
        if lease.total_seconds() <= publish_timeout:
            raise ValueError("lease must be longer than publish_timeout")
        super().__init__(
            producer,
            name=collection.name,
            batch_size=batch_size,
            poll_interval=poll_interval,
            publish_timeout=publish_timeout,
            backoff=backoff,
            housekeeping_interval=housekeeping_interval,
            registry=registry,
        )
        self._collection = collection
        self._leases: AsyncCollection[Any] = collection.database[
            lease_collection if lease_collection is not None else f"{collection.name}_outbox_leases"
        ]
        self._lease = lease
        # Held around the relay's one write to an aggregate document (the removal of published
        # events), for services that serialise their own writes per document (FerretDB).
        self._write_guard = write_guard
        self.relay_id = relay_id if relay_id is not None else uuid.uuid4().hex
        self._server_counts = True
        # Bounds the client-side backlog count (servers without $size): a gauge, not an audit.
        self._metrics_scan_limit = 10_000

    async def _acquire(self, doc_ids: Sequence[Any], now: datetime) -> list[Any]:
        """Take the leases on ``doc_ids``: one unordered insert of them all (atomic per lease
        everywhere), then an expired takeover of each one already leased; the ids taken."""
        until = now + self._lease
        leases = [{"_id": doc_id, "until": until, "owner": self.relay_id} for doc_id in doc_ids]
        try:
            await self._leases.insert_many(leases, ordered=False)
        except BulkWriteError as error:
            refused = {
                write_error["index"]
                for write_error in error.details.get("writeErrors", ())
                if write_error.get("code") == DUPLICATE_KEY
            }
            if len(refused) != len(error.details.get("writeErrors", ())):
                raise  # anything but "leased already" is an error of the store
        else:
            return list(doc_ids)
        taken = []
        for index, doc_id in enumerate(doc_ids):
            if index not in refused:
                taken.append(doc_id)
                continue
            result = await self._leases.update_one(
                {"_id": doc_id, "until": {"$lte": now}},
                {"$set": {"until": until, "owner": self.relay_id}},
            )
            # On FerretDB two relays may both win this race: duplicates, never losses.
            if result.modified_count:
                taken.append(doc_id)
        return taken

    async def _release(self, doc_ids: Sequence[Any]) -> None:
        await self._leases.delete_many({"_id": {"$in": list(doc_ids)}, "owner": self.relay_id})

    async def _claim(self) -> list[Mapping[str, Any]]:
        """Lease and read up to ``batch_size`` documents with pending events, oldest first.

        Four round trips whatever the batch: the candidates, their leases, their documents
        (read after the leases, so what is published is current), and later the release.
        """
        now = bson_now()
        candidates = [
            doc["_id"]
            async for doc in self._collection.find(
                {F_PENDING: True},
                projection={"_id": 1},
                sort=[(F_PENDING_SINCE, 1)],
                limit=self._batch_size,
            )
        ]
        if not candidates:
            return []
        leased = await self._acquire(candidates, now)
        if not leased:
            return []
        found = {
            doc["_id"]: doc
            async for doc in self._collection.find({"_id": {"$in": leased}, F_PENDING: True})
        }
        # Published in the candidates' order (oldest pending first).
        claimed = [found[doc_id] for doc_id in leased if doc_id in found]
        if len(claimed) < len(leased):
            await self._release([doc_id for doc_id in leased if doc_id not in found])
        return claimed

    async def run_once(self) -> int:
        claimed = await self._claim()
        if not claimed:
            return 0
        per_doc: list[tuple[Mapping[str, Any], list[tuple[dict[str, Any], OutboxMessage]]]] = []
        messages: list[OutboxMessage] = []
        for doc in claimed:
            pairs = [(dict(element), _message(element)) for element in doc.get(F_OUTBOX) or ()]
            per_doc.append((doc, pairs))
            messages.extend(message for _, message in pairs)
        try:
            done, error = await self._publish(messages) if messages else ([], None)
            done_ids = {id(message) for message in done}
            marked: list[OutboxMessage] = []
            acknowledgements: list[tuple[Mapping[str, Any], list[dict[str, Any]], int]] = []
            for doc, pairs in per_doc:
                published = [(element, msg) for element, msg in pairs if id(msg) in done_ids]
                acknowledgements.append((doc, [element for element, _ in published], len(pairs)))
                marked.extend(msg for _, msg in published)
            await self._acknowledge(acknowledgements)
        finally:
            await self._release([doc["_id"] for doc in claimed])
        self._count_published(marked)
        if error is not None:
            raise error
        return len(marked)

    async def _acknowledge(
        self, acknowledgements: Sequence[tuple[Mapping[str, Any], list[dict[str, Any]], int]]
    ) -> None:
        """Remove the published elements from their documents: one update per document, all
        sent in one bulk write (two when some documents changed since they were read)."""
        async with contextlib.AsyncExitStack() as guards:
            if self._write_guard is not None:
                # Sorted: the service's own writes hold one guard at a time, so no deadlock.
                for doc_id in sorted((doc["_id"] for doc, _, _ in acknowledgements), key=str):
                    await guards.enter_async_context(self._write_guard(doc_id))
            await self._remove_published(acknowledgements)

    async def _remove_published(
        self, acknowledgements: Sequence[tuple[Mapping[str, Any], list[dict[str, Any]], int]]
    ) -> None:
        # Everything read went out: if no write added events since (same write id), clear the
        # outbox; this also resets a pending marker left on an empty array (nothing published).
        whole = [
            (doc, published)
            for doc, published, pending in acknowledgements
            if len(published) == pending
        ]
        # Some failed: remove exactly what went out.
        partly = [
            (doc, published)
            for doc, published, pending in acknowledgements
            if published and len(published) != pending
        ]
        if whole:
            result = await self._collection.bulk_write(
                [
                    UpdateOne(
                        {"_id": doc["_id"], F_WRITE_ID: doc.get(F_WRITE_ID)},
                        {"$set": {F_OUTBOX: [], F_PENDING: False}, "$unset": {F_PENDING_SINCE: ""}},
                    )
                    for doc, _ in whole
                ],
                ordered=False,
            )
            if result.matched_count < len(whole):
                # A writer added events to some of them meanwhile (which ones the result does not
                # say): remove exactly what went out from all of them; on a cleared one it is
                # a no-op.
                partly.extend(whole)
        if partly:
            await self._collection.bulk_write(
                [
                    UpdateOne({"_id": doc["_id"]}, {"$pullAll": {F_OUTBOX: published}})
                    for doc, published in partly
                ],
                ordered=False,
            )

    async def housekeeping(self) -> None:
        # Leases left by relays that died are taken over when expired; drop the long-dead ones.
        await self._leases.delete_many({"until": {"$lt": bson_now() - timedelta(hours=1)}})
        await self.refresh_metrics()

    async def refresh_metrics(self) -> None:
        backlog = await self._count_pending_events()
        oldest = await self._collection.find_one(
            {F_PENDING: True}, projection={F_PENDING_SINCE: 1}, sort=[(F_PENDING_SINCE, 1)]
        )
        age = 0.0
        since = oldest.get(F_PENDING_SINCE) if oldest else None
        if isinstance(since, datetime):
            since = since if since.tzinfo else since.replace(tzinfo=UTC)
            age = max((datetime.now(UTC) - since).total_seconds(), 0.0)
        self._metrics.backlog.labels(self.name).set(backlog)
        self._metrics.oldest_unsent_age.labels(self.name).set(age)

    async def _count_pending_events(self) -> int:
        if self._server_counts:
            try:
                total = 0
                async for row in await self._collection.aggregate(
                    [
                        {"$match": {F_PENDING: True}},
                        {"$project": {"n": {"$size": {"$ifNull": [f"${F_OUTBOX}", []]}}}},
                        {"$group": {"_id": None, "n": {"$sum": "$n"}}},
                    ]
                ):
                    total = int(row["n"])
                return total
            except OperationFailure:
                # FerretDB 1.x has no $size in $project: count on this side from now on.
                self._server_counts = False
        total = 0
        async for doc in self._collection.find(
            {F_PENDING: True}, projection={f"{F_OUTBOX}.id": 1}, limit=self._metrics_scan_limit
        ):
            total += len(doc.get(F_OUTBOX) or ())
        return total


def _message(element: Mapping[str, Any]) -> OutboxMessage:
    return OutboxMessage(
        id=str(element["id"]),
        topic=str(element["topic"]),
        key=element.get("key"),
        payload=bytes(element["payload"]),
        headers={str(k): str(v) for k, v in (element.get("headers") or {}).items()},
    )
