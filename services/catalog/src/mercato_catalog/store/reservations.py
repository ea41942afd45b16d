"""Per-order stock reservations: a saga of single-document updates, no transactions.

Reservation document (``reservations``, ``_id`` = order id), the saga record::

    {_id, lines: [{sku, quantity}], phase (domain.Phase), attempt,
     create_time, update_time, expire_time, was_held, was_committed,
     cause, reason, shortages: [{sku, kind, description}], cleanup_after, version,
     outbox, ...}                      # StockReserved / StockReleased / StockCommitted

Each product keeps ``holds.<order>`` = {o, q, a: attempt, t} for the units it holds for an
order. The rules that make this safe without transactions:

* Holding a line is one guarded update (``stock_available >= q`` and no hold for the order):
  never below zero, never twice for one order.
* The saga moves between phases only by guarded updates (``phase in [...]`` and the attempt),
  so exactly one caller wins each transition; the step it starts (commit the holds, give them
  back) is idempotent per product, so a retry, a concurrent caller or the sweeper can finish
  it after a crash.
* A product hold is legitimate only while the saga of its order is RESERVING, HELD or
  COMMITTING with the same attempt. Anything else (a straggler that held a line after the saga
  moved on, then crashed) is an orphan; callers remove their own and the sweeper reaps the
  rest.
* Returning committed units is guarded by a ``returns.<order>`` marker on the product, kept
  for ``return_marker_retention`` after the release and then dropped by the sweeper.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError

from mercato_catalog import events
from mercato_catalog.domain import (
    Line,
    Phase,
    ReleaseCause,
    Reservation,
    ReservationBusy,
    ReservationClosed,
    ReservationMismatch,
    ReservationNotFound,
    ReservationState,
    Shortage,
    ShortageKind,
    StockUnavailable,
    decode_page_token,
    encode_page_token,
    phases_of,
    same_lines,
)
from mercato_catalog.store.common import RESERVATIONS, StoreContext, as_utc, utcnow
from mercato_catalog.store.products import HoldOutcome, ProductStore
from mercato_common.kafka.envelope import Envelope
from mercato_common.outbox import with_outbox

__all__ = ["ReservationStore", "reservation_from_doc"]

log = logging.getLogger("mercato_catalog.reservations")

_LOOP = 6  # bound on re-reads when racing other callers of the same order


def reservation_from_doc(doc: Mapping[str, Any]) -> Reservation:
    expire = doc.get("expire_time")
    return Reservation(
        order_id=str(doc["_id"]),
        lines=tuple(Line(str(x["sku"]), int(x["quantity"])) for x in doc.get("lines") or ()),
        phase=Phase(doc["phase"]),
        attempt=str(doc.get("attempt", "")),
        create_time=as_utc(doc["create_time"]),
        update_time=as_utc(doc["update_time"]),
        expire_time=as_utc(expire) if expire is not None else None,
        was_committed=bool(doc.get("was_committed")),
        shortages=tuple(
            Shortage(str(s["sku"]), ShortageKind(s["kind"]), str(s.get("description", "")))
            for s in doc.get("shortages") or ()
        ),
    )


def _lines_doc(lines: Sequence[Line]) -> list[dict[str, Any]]:
    return [{"sku": line.sku, "quantity": line.quantity} for line in lines]


_SHORTAGE_TEXT = {
    HoldOutcome.NOT_FOUND: (ShortageKind.NOT_FOUND, "no such product"),
    HoldOutcome.ARCHIVED: (ShortageKind.ARCHIVED, "the product is archived"),
    HoldOutcome.OUT_OF_STOCK: (ShortageKind.OUT_OF_STOCK, "not enough stock available"),
}


class ReservationStore:
    def __init__(
        self,
        ctx: StoreContext,
        products: ProductStore,
        *,
        ttl: timedelta,
        return_marker_retention: timedelta = timedelta(hours=1),
    ) -> None:
        self._ctx = ctx
        self._products = products
        self._ttl = ttl
        self._retention = return_marker_retention

    # --- reads -------------------------------------------------------------------------------

    async def _find(self, order_id: str) -> dict[str, Any] | None:
        doc: dict[str, Any] | None = await self._ctx.reservations.find_one({"_id": order_id})
        return doc

    async def get(self, order_id: str) -> Reservation:
        doc = await self._find(order_id)
        if doc is None or reservation_from_doc(doc).state is None:
            raise ReservationNotFound(
                f"no reservation for order {order_id}", metadata={"order_id": order_id}
            )
        return reservation_from_doc(doc)

    async def list_page(
        self,
        state: ReservationState | None,
        created_before: datetime | None,
        size: int,
        token: str,
    ) -> tuple[list[Reservation], str]:
        before = _to_ms(created_before) if created_before else ""
        filters = f"{state.value if state else ''}|{before}"
        fingerprint = hashlib.sha256(filters.encode()).hexdigest()[:16]
        position = decode_page_token(token, "reservations", {"t": int, "id": str}, fingerprint)
        query: dict[str, Any] = {"phase": {"$in": [p.value for p in phases_of(state)]}}
        clauses: list[dict[str, Any]] = []
        if created_before is not None:
            clauses.append({"create_time": {"$lt": created_before}})
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
        cursor = (
            self._ctx.reservations.find(query)
            .sort([("create_time", 1), ("_id", 1)])
            .limit(size + 1)
        )
        docs = [doc async for doc in cursor]
        items = [reservation_from_doc(doc) for doc in docs[:size]]
        next_token = ""
        if len(docs) > size:
            last = items[-1]
            next_token = encode_page_token(
                "reservations",
                {"t": _to_ms(last.create_time), "id": last.order_id},
                fingerprint,
            )
        return items, next_token

    # --- transitions -------------------------------------------------------------------------

    async def _transition(
        self,
        doc: Mapping[str, Any],
        from_phases: Sequence[Phase],
        sets: Mapping[str, Any],
        event_list: Sequence[Envelope] = (),
        unset: Sequence[str] = (),
        now: datetime | None = None,
    ) -> dict[str, Any] | None:
        """Move the saga from one of ``from_phases`` (same attempt as ``doc``); None if lost."""
        now = now or utcnow()
        update: dict[str, Any] = {"$set": {**sets, "update_time": now}, "$inc": {"version": 1}}
        if unset:
            update["$unset"] = {name: "" for name in unset}
        if event_list:
            update = with_outbox(update, [(e, self._ctx.topic) for e in event_list], now=now)
        query = {
            "_id": doc["_id"],
            "phase": {"$in": [p.value for p in from_phases]},
            "attempt": doc.get("attempt", ""),
        }
        async with self._ctx.locks.hold(RESERVATIONS, doc["_id"]):
            result: dict[str, Any] | None = await self._ctx.reservations.find_one_and_update(
                query, update, return_document=ReturnDocument.AFTER
            )
        return result

    async def _give_back_holds(self, doc: Mapping[str, Any]) -> None:
        """Release every hold of the saga's attempt (idempotent per product)."""
        reservation = reservation_from_doc(doc)
        for line in reservation.lines:
            await self._products.unhold(
                line.sku, reservation.order_id, reservation.attempt, line.quantity
            )

    async def finish(self, doc: Mapping[str, Any]) -> dict[str, Any]:
        """Complete the step a saga is in (after a crash, or when found half-way)."""
        reservation = reservation_from_doc(doc)
        phase = reservation.phase
        order_id = reservation.order_id
        if phase is Phase.COMMITTING:
            for line in reservation.lines:
                await self._products.sell(line.sku, order_id, reservation.attempt, line.quantity)
            now = utcnow()
            done = await self._transition(
                doc,
                [Phase.COMMITTING],
                {"phase": Phase.COMMITTED.value, "expire_time": None},
                [events.stock_committed(order_id, reservation.lines, now)],
                now=now,
            )
        elif phase in (Phase.FAILING, Phase.RELEASING, Phase.EXPIRING):
            if phase is Phase.RELEASING and reservation.was_committed:
                for line in reservation.lines:
                    await self._products.give_back(line.sku, order_id, line.quantity)
            else:
                await self._give_back_holds(doc)
            target = {
                Phase.FAILING: Phase.FAILED,
                Phase.RELEASING: Phase.RELEASED,
                Phase.EXPIRING: Phase.EXPIRED,
            }[phase]
            now = utcnow()
            sets: dict[str, Any] = {"phase": target.value, "expire_time": None}
            event_list: list[Envelope] = []
            stock_moved = bool(doc.get("was_held")) or reservation.was_committed
            if target is not Phase.FAILED and stock_moved and reservation.lines:
                event_list.append(
                    events.stock_released(
                        order_id,
                        reservation.lines,
                        cause=ReleaseCause(doc.get("cause") or ReleaseCause.REQUESTED.value),
                        was_committed=reservation.was_committed,
                        reason=str(doc.get("reason", "")),
                        when=now,
                    )
                )
            if reservation.was_committed:
                sets["cleanup_after"] = now + self._retention
            done = await self._transition(doc, [phase], sets, event_list, now=now)
        else:
            return dict(doc)
        if done is None:  # someone else finished it first
            current = await self._find(order_id)
            return current if current is not None else dict(doc)
        return done

    # --- ReserveStock ------------------------------------------------------------------------

    async def reserve(self, order_id: str, lines: Sequence[Line]) -> Reservation:
        for _ in range(_LOOP):
            doc = await self._find(order_id)
            if doc is None:
                now = utcnow()
                doc = {
                    "_id": order_id,
                    "lines": _lines_doc(lines),
                    "phase": Phase.RESERVING.value,
                    "attempt": uuid.uuid4().hex,
                    "create_time": now,
                    "update_time": now,
                    "expire_time": now + self._ttl,
                    "was_held": False,
                    "was_committed": False,
                    "shortages": [],
                    "version": 1,
                }
                try:
                    async with self._ctx.locks.hold(RESERVATIONS, order_id):
                        await self._ctx.reservations.insert_one(doc)
                except DuplicateKeyError:
                    continue  # a concurrent call for the same order created it: re-read
                return await self._run_attempt(doc)
            current = reservation_from_doc(doc)
            phase = current.phase
            if phase.closed:
                await self.finish(doc)
                raise _closed(order_id)
            if phase in (Phase.HELD, Phase.COMMITTING, Phase.COMMITTED):
                if not same_lines(current.lines, lines):
                    raise _mismatch(order_id)
                return reservation_from_doc(await self.finish(doc))
            if phase is Phase.RESERVING:
                if not same_lines(current.lines, lines):
                    raise _mismatch(order_id)
                return await self._run_attempt(doc)
            if phase is Phase.FAILING:
                await self.finish(doc)
                continue
            # FAILED: nothing is held; try again as a new attempt with these lines.
            now = utcnow()
            fresh = await self._transition(
                doc,
                [Phase.FAILED],
                {
                    "phase": Phase.RESERVING.value,
                    "attempt": uuid.uuid4().hex,
                    "lines": _lines_doc(lines),
                    "create_time": now,
                    "expire_time": now + self._ttl,
                    "shortages": [],
                },
                now=now,
            )
            if fresh is not None:
                return await self._run_attempt(fresh)
        raise _busy(order_id)

    async def _run_attempt(self, doc: Mapping[str, Any]) -> Reservation:
        reservation = reservation_from_doc(doc)
        order_id, attempt = reservation.order_id, reservation.attempt
        shortages: list[Shortage] = []
        for index, line in enumerate(reservation.lines):
            result = await self._products.hold(line.sku, order_id, line.quantity, attempt)
            if result.outcome is HoldOutcome.CONFLICT:
                # A hold of an older attempt of this order: an orphan (the saga moved on to
                # this attempt). Give it back and take ours.
                await self._products.unhold(
                    line.sku, order_id, result.other_attempt, result.other_quantity
                )
                result = await self._products.hold(line.sku, order_id, line.quantity, attempt)
                if result.outcome is HoldOutcome.CONFLICT:
                    raise _busy(order_id)
            if result.outcome in (HoldOutcome.HELD, HoldOutcome.ALREADY):
                continue
            kind, text = _SHORTAGE_TEXT[result.outcome]
            shortages.append(Shortage(line.sku, kind, text))
            # Report the other refused lines too, without holding anything more.
            shortages.extend(await self._check_remaining(reservation.lines[index + 1 :]))
            break
        if shortages:
            failing = await self._transition(
                doc,
                [Phase.RESERVING],
                {
                    "phase": Phase.FAILING.value,
                    "shortages": [
                        {"sku": s.sku, "kind": s.kind.value, "description": s.description}
                        for s in shortages
                    ],
                },
            )
            if failing is not None:
                await self.finish(failing)
                raise StockUnavailable(shortages)
            return await self._after_lost_race(doc)
        now = utcnow()
        held = await self._transition(
            doc,
            [Phase.RESERVING],
            {"phase": Phase.HELD.value, "was_held": True},
            [
                events.stock_reserved(
                    order_id,
                    reservation.lines,
                    reservation.expire_time or now + self._ttl,
                    now,
                )
            ],
            now=now,
        )
        if held is not None:
            return reservation_from_doc(held)
        return await self._after_lost_race(doc)

    async def _after_lost_race(self, mine: Mapping[str, Any]) -> Reservation:
        """Our attempt's final transition lost: see who won, and undo our holds if needed."""
        doc = await self._find(str(mine["_id"]))
        order_id = str(mine["_id"])
        if doc is None:  # cannot happen: sagas are never deleted
            raise _busy(order_id)
        current = reservation_from_doc(doc)
        same_attempt = current.attempt == mine.get("attempt")
        if same_attempt and current.phase in (Phase.HELD, Phase.COMMITTING, Phase.COMMITTED):
            return current  # a concurrent call of the same attempt completed it
        if not (same_attempt and current.phase.holds_are_live):
            # Holds we took after the saga moved on are orphans: give them back now.
            await self._give_back_holds(mine)
        if current.phase in (Phase.FAILING, Phase.FAILED) and same_attempt:
            doc = await self.finish(doc)
            raise StockUnavailable(reservation_from_doc(doc).shortages or ())
        if current.phase.closed:
            await self.finish(doc)
            raise _closed(order_id)
        raise _busy(order_id)

    async def _check_remaining(self, lines: Sequence[Line]) -> list[Shortage]:
        found = await self._products.batch_get([line.sku for line in lines])
        shortages = []
        for line in lines:
            product = found.get(line.sku)
            outcome = None
            if product is None:
                outcome = HoldOutcome.NOT_FOUND
            elif product.state.value != "ACTIVE":
                outcome = HoldOutcome.ARCHIVED
            elif product.stock_available < line.quantity:
                outcome = HoldOutcome.OUT_OF_STOCK
            if outcome is not None:
                kind, text = _SHORTAGE_TEXT[outcome]
                shortages.append(Shortage(line.sku, kind, text))
        return shortages

    # --- CommitReservation -------------------------------------------------------------------

    async def commit(self, order_id: str) -> Reservation:
        for _ in range(_LOOP):
            doc = await self._find(order_id)
            if doc is None:
                raise ReservationNotFound(
                    f"no reservation for order {order_id}", metadata={"order_id": order_id}
                )
            current = reservation_from_doc(doc)
            phase = current.phase
            if phase in (Phase.COMMITTED, Phase.COMMITTING):
                return reservation_from_doc(await self.finish(doc))
            if phase is Phase.HELD:
                now = utcnow()
                if current.expire_time is not None and current.expire_time <= now:
                    await self.expire(doc)
                    raise _closed(order_id)
                committing = await self._transition(
                    doc, [Phase.HELD], {"phase": Phase.COMMITTING.value}, now=now
                )
                if committing is not None:
                    return reservation_from_doc(await self.finish(committing))
                continue
            if phase is Phase.RESERVING:
                raise _busy(order_id)
            await self.finish(doc)
            raise _closed(order_id)
        raise _busy(order_id)

    # --- ReleaseStock ------------------------------------------------------------------------

    async def release(self, order_id: str, reason: str) -> Reservation:
        for _ in range(_LOOP):
            doc = await self._find(order_id)
            if doc is None:
                # Record the release, so that a ReserveStock arriving later reserves nothing.
                now = utcnow()
                tombstone = {
                    "_id": order_id,
                    "lines": [],
                    "phase": Phase.RELEASED.value,
                    "attempt": "",
                    "create_time": now,
                    "update_time": now,
                    "expire_time": None,
                    "was_held": False,
                    "was_committed": False,
                    "cause": ReleaseCause.REQUESTED.value,
                    "reason": reason,
                    "shortages": [],
                    "version": 1,
                }
                try:
                    async with self._ctx.locks.hold(RESERVATIONS, order_id):
                        await self._ctx.reservations.insert_one(tombstone)
                except DuplicateKeyError:
                    continue
                return reservation_from_doc(tombstone)
            phase = Phase(doc["phase"])
            if phase in (Phase.RELEASED, Phase.EXPIRED):
                return reservation_from_doc(doc)
            if phase in (Phase.RELEASING, Phase.EXPIRING):
                return reservation_from_doc(await self.finish(doc))
            if phase in (Phase.COMMITTING, Phase.FAILING):
                await self.finish(doc)
                continue
            sets: dict[str, Any] = {
                "phase": Phase.RELEASING.value,
                "cause": ReleaseCause.REQUESTED.value,
                "reason": reason,
            }
            if phase is Phase.COMMITTED:
                sets["was_committed"] = True
            if phase is Phase.FAILED:
                # Nothing is held: close it (a later ReserveStock reserves nothing).
                sets["phase"] = Phase.RELEASED.value
                sets["lines"] = []
            moved = await self._transition(doc, [phase], sets)
            if moved is not None:
                return reservation_from_doc(await self.finish(moved))
        raise _busy(order_id)

    # --- the sweeper's work ------------------------------------------------------------------

    async def expire(self, doc: Mapping[str, Any]) -> bool:
        moved = await self._transition(
            doc,
            [Phase.RESERVING, Phase.HELD],
            {"phase": Phase.EXPIRING.value, "cause": ReleaseCause.EXPIRED.value},
        )
        if moved is None:
            return False
        await self.finish(moved)
        return True

    async def expire_due(self, now: datetime, limit: int) -> int:
        """Expire reservations past their deadline that were never committed."""
        due = [
            doc
            async for doc in self._ctx.reservations.find(
                {
                    "phase": {"$in": [Phase.RESERVING.value, Phase.HELD.value]},
                    "expire_time": {"$lte": now},
                }
            ).limit(limit)
        ]
        count = 0
        for doc in due:
            if await self.expire(doc):
                count += 1
        return count

    async def finish_stuck(self, older_than: datetime, limit: int) -> int:
        """Complete steps whose caller died half-way."""
        stuck = [
            doc
            async for doc in self._ctx.reservations.find(
                {
                    "phase": {
                        "$in": [
                            Phase.COMMITTING.value,
                            Phase.RELEASING.value,
                            Phase.EXPIRING.value,
                            Phase.FAILING.value,
                        ]
                    },
                    "update_time": {"$lte": older_than},
                }
            ).limit(limit)
        ]
        for doc in stuck:
            await self.finish(doc)
        return len(stuck)

    async def forget_returns(self, now: datetime, limit: int) -> int:
        """Drop the ``returns`` markers of releases older than the retention."""
        docs = [
            doc
            async for doc in self._ctx.reservations.find({"cleanup_after": {"$lte": now}}).limit(
                limit
            )
        ]
        for doc in docs:
            reservation = reservation_from_doc(doc)
            for line in reservation.lines:
                await self._products.forget_return(line.sku, reservation.order_id)
            async with self._ctx.locks.hold(RESERVATIONS, doc["_id"]):
                await self._ctx.reservations.update_one(
                    {"_id": doc["_id"]}, {"$unset": {"cleanup_after": ""}}
                )
        return len(docs)

    async def reap_orphan_holds(self, older_than: datetime, limit: int) -> int:
        """Give back product holds whose saga no longer owns them (crashed stragglers)."""
        reaped = 0
        after = ""
        while True:
            page = await self._products.products_with_holds(after, limit)
            for product in page:
                reaped += await self._reap_product(product, older_than)
            if len(page) < limit:
                return reaped
            after = str(page[-1]["_id"])

    async def _reap_product(self, product: Mapping[str, Any], older_than: datetime) -> int:
        reaped = 0
        sku = str(product["_id"])
        for hold in (product.get("holds") or {}).values():
            if not isinstance(hold, Mapping):
                continue
            held_at = hold.get("t")
            if not isinstance(held_at, datetime) or as_utc(held_at) > older_than:
                continue
            order_id = str(hold.get("o", ""))
            saga = await self._find(order_id)
            if saga is not None:
                current = reservation_from_doc(saga)
                if current.attempt == hold.get("a") and current.phase.holds_are_live:
                    continue
            if await self._products.unhold(
                sku, order_id, str(hold.get("a")), int(hold.get("q", 0))
            ):
                log.warning("reaped an orphan hold", extra={"sku": sku, "order_id": order_id})
                reaped += 1
        return reaped


def _to_ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _from_ms(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _closed(order_id: str) -> ReservationClosed:
    return ReservationClosed(
        f"the reservation of order {order_id} was released or expired",
        metadata={"order_id": order_id},
    )


def _mismatch(order_id: str) -> ReservationMismatch:
    return ReservationMismatch(
        f"order {order_id} already has a reservation with other lines",
        metadata={"order_id": order_id},
    )


def _busy(order_id: str) -> ReservationBusy:
    return ReservationBusy(
        f"the reservation of order {order_id} is being changed; retry",
        metadata={"order_id": order_id},
    )
