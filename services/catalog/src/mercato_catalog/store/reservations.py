"""Reservation sagas in MongoDB: reads, inserts and the guarded moves between phases.

Reservation document (``reservations``, ``_id`` = order id), the saga record::

    {_id, lines: [{sku, quantity}], phase (domain Phase), attempt,
     create_time, create_minute (the minute since 1970 of create_time, what a short
     creation range is listed by), update_time, expire_time, expire_minute (the same of
     expire_time, what the sweeper queries by), was_held, was_committed,
     cause, reason, shortages: [{sku, kind, description}], cleanup_after, cleanup (true while
     cleanup_after is set), cleanup_minute (the minute since 1970 of cleanup_after), version,
     outbox, ...}                      # StockReserved / StockReleased / StockCommitted

The saga moves between phases only by guarded updates (``phase in [...]`` and the attempt it
was read at), so exactly one caller wins each move; the events the caller hands over ride in
the same update. Which moves happen, and with which events, is the use cases' (``service``).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from pymongo import ReturnDocument, UpdateOne

from mercato_catalog.domain.errors import Shortage, ShortageKind
from mercato_catalog.domain.listing import (
    ReservationFilter,
    decode_page_token,
    encode_page_token,
    to_ms,
)
from mercato_catalog.domain.reservations import (
    Line,
    Move,
    Phase,
    ReleaseCause,
    Reservation,
    minute_bucket,
    phases_of,
)
from mercato_catalog.store.common import RESERVATIONS, StoreContext, as_utc
from mercato_common.kafka.envelope import Envelope

__all__ = ["MINUTES_LISTED_BY_EQUALITY", "ReservationStore", "reservation_from_doc"]

# A listing bounded on both sides of its creation time by at most this many minutes reads one
# equality query per phase and minute (``create_minute``); a wider or open range reads every
# saga of each phase, since FerretDB evaluates a range by reading them all. Each minute's query
# still reads that minute's sagas whole (FerretDB evaluates the rest of the filter, the page's
# position included, after reading them): hence ListReservations' larger pages.
MINUTES_LISTED_BY_EQUALITY = 15


def _optional_time(value: Any) -> datetime | None:
    return as_utc(value) if value is not None else None


def _expiry_minute(expire_time: datetime | None) -> int | None:
    return minute_bucket(expire_time) if expire_time is not None else None


def reservation_from_doc(doc: Mapping[str, Any]) -> Reservation:
    cause = doc.get("cause")
    return Reservation(
        order_id=str(doc["_id"]),
        lines=tuple(Line(str(x["sku"]), int(x["quantity"])) for x in doc.get("lines") or ()),
        phase=Phase(doc["phase"]),
        attempt=str(doc.get("attempt", "")),
        create_time=as_utc(doc["create_time"]),
        update_time=as_utc(doc["update_time"]),
        expire_time=_optional_time(doc.get("expire_time")),
        was_committed=bool(doc.get("was_committed")),
        shortages=tuple(
            Shortage(str(s["sku"]), ShortageKind(s["kind"]), str(s.get("description", "")))
            for s in doc.get("shortages") or ()
        ),
        was_held=bool(doc.get("was_held")),
        cause=ReleaseCause(cause) if cause else None,
        reason=str(doc.get("reason", "")),
        cleanup_after=_optional_time(doc.get("cleanup_after")),
    )


def _field_doc(name: str, value: Any) -> Any:
    """A reservation field as the document keeps it."""
    if name == "lines":
        return [{"sku": line.sku, "quantity": line.quantity} for line in value]
    if name == "shortages":
        return [{"sku": s.sku, "kind": s.kind.value, "description": s.description} for s in value]
    return value.value if isinstance(value, Enum) else value


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


@dataclass(eq=False)
class ReservationStore:
    ctx: StoreContext

    async def _find_all(self, query: Mapping[str, Any], limit: int) -> list[Reservation]:
        cursor = self.ctx.reservations.find(query).limit(limit)
        return [reservation_from_doc(doc) async for doc in cursor]

    # --- reads -------------------------------------------------------------------------------

    async def find(self, order_id: str) -> Reservation | None:
        doc = await self.ctx.reservations.find_one({"_id": order_id})
        return reservation_from_doc(doc) if doc is not None else None

    async def live_attempts(self, created_in: Collection[int] | None = None) -> dict[str, str]:
        """The attempt of every saga whose holds are live (RESERVING, HELD, COMMITTING), by
        order id: one equality query per phase (what FerretDB evaluates in PostgreSQL), reading
        the open sagas only, whatever the history stored. With ``created_in``, only the sagas
        created in those minutes (:func:`minute_bucket`): one equality query per phase and
        minute, reading those sagas only, however many others are open."""
        buckets: list[dict[str, int]] = (
            [{}] if created_in is None else [{"create_minute": m} for m in sorted(created_in)]
        )
        found: dict[str, str] = {}
        for phase in (p for p in Phase if p.holds_are_live):
            for bucket in buckets:
                cursor = self.ctx.reservations.find(
                    {"phase": phase.value, **bucket}, projection={"attempt": 1}
                )
                async for doc in cursor:
                    found[str(doc["_id"])] = str(doc.get("attempt", ""))
        return found

    async def list_page(
        self, flt: ReservationFilter, size: int, token: str
    ) -> tuple[list[Reservation], str]:
        fingerprint = flt.fingerprint()
        position = decode_page_token(token, "reservations", {"t": int, "id": str}, fingerprint)
        query: dict[str, Any] = {}
        clauses: list[dict[str, Any]] = []
        if flt.created_before is not None:
            clauses.append({"create_time": {"$lt": flt.created_before}})
        if flt.created_after is not None:
            clauses.append({"create_time": {"$gte": flt.created_after}})
        if position is not None:
            after = _from_ms(position["t"])
            clauses.append(
                {
                    "$or": [
                        {"create_time": {"$gt": after}},
                        {"create_time": after, "_id": {"$gt": position["id"]}},
                    ]
                }
            )
        if clauses:
            query["$and"] = clauses
        # One query per phase (and creation minute, for a short range), each led by the
        # equalities FerretDB can evaluate in PostgreSQL (see the sweeper's queries below),
        # merged into the page's order.
        buckets: list[dict[str, Any]] = [{}]
        if flt.created_after is not None and flt.created_before is not None:
            minutes = range(minute_bucket(flt.created_after), minute_bucket(flt.created_before) + 1)
            if len(minutes) <= MINUTES_LISTED_BY_EQUALITY:
                if position is not None:  # the minutes before the page's are listed already
                    minutes = range(
                        max(minutes.start, minute_bucket(_from_ms(position["t"]))), minutes.stop
                    )
                buckets = [{"create_minute": minute} for minute in minutes]
        docs: list[Mapping[str, Any]] = []
        for phase in phases_of(flt.state):
            for bucket in buckets:
                cursor = (
                    self.ctx.reservations.find({"phase": phase.value, **bucket, **query})
                    .sort([("create_time", 1), ("_id", 1)])
                    .limit(size + 1)
                )
                docs.extend([doc async for doc in cursor])
        docs.sort(key=lambda doc: (as_utc(doc["create_time"]), str(doc["_id"])))
        docs = docs[: size + 1]
        items = [reservation_from_doc(doc) for doc in docs[:size]]
        next_token = ""
        if len(docs) > size:
            last = items[-1]
            next_token = encode_page_token(
                "reservations",
                {"t": to_ms(last.create_time), "id": last.order_id},
                fingerprint,
            )
        return items, next_token

    # The sweeper's queries run every few seconds for the life of the service, so each one
    # leads with an equality (one query per phase; ``cleanup: true`` for pending clean-ups):
    # FerretDB evaluates an equality in PostgreSQL, but an ``$in`` or a range alone by reading
    # every saga, and the sagas grow with the order history (measured: 20,000 sagas, about
    # 900 ms per ``$in`` query against about 5 ms with the equality).

    async def _in_phases(
        self, phases: Sequence[Phase], condition: Mapping[str, Any], limit: int
    ) -> list[Reservation]:
        found: list[Reservation] = []
        for phase in phases:
            if len(found) >= limit:
                break
            query = {"phase": phase.value, **condition}
            found.extend(await self._find_all(query, limit - len(found)))
        return found

    async def due_for_expiry(
        self, now: datetime, limit: int, *, minutes: Sequence[int] | None = None
    ) -> list[Reservation]:
        """Sagas past their deadline that were never committed: those whose deadline falls in
        one of ``minutes`` (:func:`minute_bucket`: one equality query per phase and minute,
        whatever the number of sagas held), or all of them (``None``: a scan of the phases)."""
        phases = (Phase.RESERVING, Phase.HELD)
        due = {"expire_time": {"$lte": now}}
        if minutes is None:
            return await self._in_phases(phases, due, limit)
        found: list[Reservation] = []
        for minute in minutes:
            if len(found) >= limit:
                break
            found.extend(
                await self._in_phases(phases, {"expire_minute": minute, **due}, limit - len(found))
            )
        return found

    async def stuck(self, older_than: datetime, limit: int) -> list[Reservation]:
        """Sagas in a step nobody has moved since ``older_than`` (their caller died)."""
        phases = [p for p in Phase if p.in_step]
        return await self._in_phases(phases, {"update_time": {"$lte": older_than}}, limit)

    async def due_for_cleanup(
        self, now: datetime, limit: int, *, minutes: Sequence[int] | None = None
    ) -> list[Reservation]:
        """Released sagas whose products' return markers can go: those whose clean-up falls in
        one of ``minutes`` (``cleanup_minute``, one equality query a minute), or all of them
        (``None``: every pending clean-up read)."""
        due = {"cleanup_after": {"$lte": now}}
        if minutes is None:
            return await self._find_all({"cleanup": True, **due}, limit)
        found: list[Reservation] = []
        for minute in minutes:
            if len(found) >= limit:
                break
            found.extend(
                await self._find_all({"cleanup_minute": minute, **due}, limit - len(found))
            )
        return found

    async def mark_pending_cleanups(self) -> int:
        """Flag the clean-ups of sagas stored before ``cleanup`` existed. Run once at start,
        before anything else writes (so no write lock): one read of the sagas."""
        result = await self.ctx.reservations.update_many(
            {"cleanup_after": {"$exists": True}, "cleanup": {"$exists": False}},
            {"$set": {"cleanup": True}},
        )
        return int(result.modified_count)

    async def add_create_minutes(self, batch: int = 1000) -> int:
        """Give sagas stored before ``create_minute`` existed theirs, so that short creation
        ranges list them. Run once at start, before anything else writes (so no write lock):
        one query (on FerretDB a read of every saga), updates only for those that lack it."""
        cursor = self.ctx.reservations.find(
            {"create_minute": {"$exists": False}}, projection={"create_time": 1}
        )
        updates: list[UpdateOne] = []
        added = 0
        async for doc in cursor:
            minute = minute_bucket(as_utc(doc["create_time"]))
            updates.append(UpdateOne({"_id": doc["_id"]}, {"$set": {"create_minute": minute}}))
            if len(updates) >= batch:
                added += (await self.ctx.reservations.bulk_write(updates)).modified_count
                updates = []
        if updates:
            added += (await self.ctx.reservations.bulk_write(updates)).modified_count
        return added

    # --- writes ------------------------------------------------------------------------------

    async def insert(self, saga: Reservation, events: Sequence[Envelope] = ()) -> bool:
        """Store a new saga with ``events``; False when the order has one already (a concurrent
        call, an earlier one, or the sweeper's)."""
        doc: dict[str, Any] = {
            "_id": saga.order_id,
            "lines": _field_doc("lines", saga.lines),
            "phase": saga.phase.value,
            "attempt": saga.attempt,
            "create_time": saga.create_time,
            "create_minute": minute_bucket(saga.create_time),
            "update_time": saga.update_time,
            "expire_time": saga.expire_time,
            "expire_minute": _expiry_minute(saga.expire_time),
            "was_held": saga.was_held,
            "was_committed": saga.was_committed,
            "shortages": _field_doc("shortages", saga.shortages),
            "version": 1,
        }
        if saga.cause is not None:
            doc |= {"cause": saga.cause.value, "reason": saga.reason}
        return await self.ctx.insert_new(RESERVATIONS, doc, events, saga.update_time)

    async def move(self, move: Move, events: Sequence[Envelope] = ()) -> Reservation | None:
        """Apply ``move`` with ``events`` if the saga is still where it was read; None if
        another caller moved it first."""
        sets = {name: _field_doc(name, value) for name, value in move.changes.items()}
        if sets.get("cleanup_after") is not None:
            # What due_for_cleanup looks for: every pending one, and those due in a minute.
            sets["cleanup"] = True
            sets["cleanup_minute"] = minute_bucket(sets["cleanup_after"])
        if "expire_time" in move.changes:
            sets["expire_minute"] = _expiry_minute(move.changes["expire_time"])  # due_for_expiry
        update = {"$set": {**sets, "update_time": move.at}, "$inc": {"version": 1}}
        query = {
            "_id": move.saga.order_id,
            "phase": {"$in": [p.value for p in move.from_phases]},
            "attempt": move.saga.attempt,
        }
        async with self.ctx.locks.hold(RESERVATIONS, move.saga.order_id):
            doc = await self.ctx.reservations.find_one_and_update(
                query,
                self.ctx.with_events(update, events, move.at),
                return_document=ReturnDocument.AFTER,
            )
        if doc is None:
            return None
        self.ctx.announce(RESERVATIONS, events)
        return reservation_from_doc(doc)

    async def clear_cleanup(self, order_id: str) -> None:
        """The saga's return markers are gone: nothing left to clean up."""
        async with self.ctx.locks.hold(RESERVATIONS, order_id):
            await self.ctx.reservations.update_one(
                {"_id": order_id},
                {"$unset": {"cleanup_after": "", "cleanup": "", "cleanup_minute": ""}},
            )
