"""Per-order stock reservations: lines, the saga's phases, and each step between them.

An order's reservation is a saga record. Stable phases: HELD, COMMITTED, RELEASED, EXPIRED,
FAILED. The others are a step in progress, finished by whoever finds it (the caller, a retry or
the sweeper)::

    (first attempt: stored once its lines are held or refused) HELD | FAILED
    RESERVING → HELD → COMMITTING → COMMITTED → RELEASING → RELEASED
    RESERVING | HELD → RELEASING → RELEASED
    RESERVING | HELD → EXPIRING → EXPIRED
    RESERVING → FAILING → FAILED → (a new attempt) RESERVING

Every step is a :class:`Move`: valid only while the saga is still in the phase (and attempt) it
was read in, so exactly one of several concurrent callers makes it.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from enum import Enum
from typing import Any

from mercato_catalog.domain.errors import Shortage, invalid
from mercato_catalog.domain.products import check_sku
from mercato_catalog.domain.stock import Hold

__all__ = [
    "Line",
    "Move",
    "Phase",
    "ReleaseCause",
    "Reservation",
    "ReservationState",
    "abandoned",
    "begin",
    "check_lines",
    "fail",
    "failed_first",
    "held_first",
    "hold_all",
    "minute_bucket",
    "owns",
    "phases_of",
    "public_state",
    "released_unreserved",
    "retry",
    "same_lines",
    "settle",
    "start_commit",
    "start_expiry",
    "start_release",
]


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int

    def __post_init__(self) -> None:
        check_sku(self.sku, "lines.sku")
        if type(self.quantity) is not int or not 1 <= self.quantity <= 1000:
            raise invalid(
                "quantity must be between 1 and 1000",
                "lines.quantity",
                "must be between 1 and 1000",
            )


def check_lines(lines: Sequence[Line]) -> tuple[Line, ...]:
    if not 1 <= len(lines) <= 100:
        raise invalid("a reservation has 1-100 lines", "lines", "must have 1-100 items")
    skus = [line.sku for line in lines]
    if len(set(skus)) != len(skus):
        raise invalid("lines must have distinct SKUs", "lines", "SKUs must be distinct")
    return tuple(lines)


def same_lines(a: Sequence[Line], b: Sequence[Line]) -> bool:
    """Whether two requests reserve the same things (order of lines does not matter)."""
    return sorted((x.sku, x.quantity) for x in a) == sorted((x.sku, x.quantity) for x in b)


class Phase(Enum):
    """Where an order's reservation (the saga record) stands (see the module's diagram)."""

    RESERVING = "RESERVING"  # holding the lines
    HELD = "HELD"
    COMMITTING = "COMMITTING"  # turning holds into sales
    COMMITTED = "COMMITTED"
    RELEASING = "RELEASING"  # giving the stock back (held or committed)
    RELEASED = "RELEASED"
    EXPIRING = "EXPIRING"  # giving held stock back after the deadline
    EXPIRED = "EXPIRED"
    FAILING = "FAILING"  # a line was refused: giving back the lines taken
    FAILED = "FAILED"

    @property
    def holds_are_live(self) -> bool:
        """Whether product holds of the current attempt are legitimate in this phase."""
        return self in (Phase.RESERVING, Phase.HELD, Phase.COMMITTING)

    @property
    def in_step(self) -> bool:
        """A step in progress: whoever finds the saga here finishes it (:func:`settle`)."""
        return self in _SETTLED

    @property
    def closed(self) -> bool:
        """Released or expired (or on the way): a later ReserveStock reserves nothing."""
        return self in (Phase.RELEASING, Phase.RELEASED, Phase.EXPIRING, Phase.EXPIRED)


# The stable phase each step ends in.
_SETTLED = {
    Phase.COMMITTING: Phase.COMMITTED,
    Phase.FAILING: Phase.FAILED,
    Phase.RELEASING: Phase.RELEASED,
    Phase.EXPIRING: Phase.EXPIRED,
}


class ReservationState(Enum):
    """The public state (proto ReservationState)."""

    HELD = "HELD"
    COMMITTED = "COMMITTED"
    RELEASED = "RELEASED"
    EXPIRED = "EXPIRED"


_PUBLIC_STATE = {
    Phase.RESERVING: ReservationState.HELD,
    Phase.HELD: ReservationState.HELD,
    Phase.COMMITTING: ReservationState.COMMITTED,
    Phase.COMMITTED: ReservationState.COMMITTED,
    Phase.RELEASING: ReservationState.RELEASED,
    Phase.RELEASED: ReservationState.RELEASED,
    Phase.EXPIRING: ReservationState.EXPIRED,
    Phase.EXPIRED: ReservationState.EXPIRED,
}


def public_state(phase: Phase) -> ReservationState | None:
    """The state callers see; None for a failed attempt (nothing is reserved)."""
    return _PUBLIC_STATE.get(phase)


def phases_of(state: ReservationState | None) -> list[Phase]:
    """Phases listed under a public state filter (None: every visible one)."""
    return [p for p, s in _PUBLIC_STATE.items() if state is None or s is state]


class ReleaseCause(Enum):
    REQUESTED = "REQUESTED"
    EXPIRED = "EXPIRED"


@dataclass(frozen=True, slots=True)
class Reservation:
    order_id: str
    lines: tuple[Line, ...]
    phase: Phase
    attempt: str  # the attempt whose product holds are this saga's
    create_time: datetime
    update_time: datetime
    expire_time: datetime | None
    was_committed: bool = False  # released after a commit: sold units go back on hand
    shortages: tuple[Shortage, ...] = ()  # why the last attempt failed
    was_held: bool = False  # the lines were all held once (a release emits StockReleased)
    cause: ReleaseCause | None = None  # why it is released or expired
    reason: str = ""  # the caller's reason for a release
    cleanup_after: datetime | None = None  # when the products' return markers can go

    @property
    def state(self) -> ReservationState | None:
        return public_state(self.phase)

    @property
    def moved_stock(self) -> bool:
        """Whether stock was ever reserved or sold for it (its release is then an event)."""
        return self.was_held or self.was_committed

    @property
    def returns_sold_units(self) -> bool:
        """Releasing after a commit: the units go back on hand (not back from holds)."""
        return self.phase is Phase.RELEASING and self.was_committed

    def expired(self, now: datetime) -> bool:
        return self.expire_time is not None and self.expire_time <= now


def minute_bucket(when: datetime) -> int:
    """The minute (since 1970, UTC) ``when`` falls in: the bucket a saga's expiry and creation
    are stored under, so the sweeper finds what is due, and a listing what was created in a few
    minutes, by equality instead of by a range over every saga."""
    return int(when.timestamp()) // 60


_FIELDS = frozenset(f.name for f in fields(Reservation))


@dataclass(frozen=True, slots=True)
class Move:
    """One step of a saga. It applies only while the saga is still in one of ``from_phases``
    with the attempt ``saga`` was read at (so one caller wins it); ``changes`` are the
    :class:`Reservation` fields it sets, ``at`` the time of the step."""

    saga: Reservation
    from_phases: tuple[Phase, ...]
    at: datetime
    changes: Mapping[str, Any]

    def __post_init__(self) -> None:
        unknown = set(self.changes) - _FIELDS
        if unknown:
            raise ValueError(f"not fields of a reservation: {sorted(unknown)}")

    @property
    def after(self) -> Reservation:
        return replace(self.saga, **self.changes, update_time=self.at)


def _new_attempt() -> str:
    return uuid.uuid4().hex


def begin(order_id: str, lines: Sequence[Line], now: datetime, ttl: timedelta) -> Reservation:
    """A new saga: its first attempt starts holding ``lines``, due to expire after ``ttl``."""
    return Reservation(
        order_id=order_id,
        lines=tuple(lines),
        phase=Phase.RESERVING,
        attempt=_new_attempt(),
        create_time=now,
        update_time=now,
        expire_time=now + ttl,
    )


def released_unreserved(order_id: str, reason: str, now: datetime) -> Reservation:
    """A release that came before any reservation: closes the order, reserves nothing."""
    return Reservation(
        order_id=order_id,
        lines=(),
        phase=Phase.RELEASED,
        attempt="",
        create_time=now,
        update_time=now,
        expire_time=None,
        cause=ReleaseCause.REQUESTED,
        reason=reason,
    )


def held_first(saga: Reservation, now: datetime) -> Reservation:
    """A new saga (:func:`begin`) whose lines were all held before it was stored: it is stored
    HELD at once, one write instead of an insert and a move."""
    return hold_all(saga, now).after


def failed_first(saga: Reservation, shortages: Sequence[Shortage], now: datetime) -> Reservation:
    """A new saga (:func:`begin`) with a refused line, whose holds were given back before it was
    stored: it is stored FAILED (a later ReserveStock tries a fresh attempt)."""
    return replace(
        saga, phase=Phase.FAILED, shortages=tuple(shortages), expire_time=None, update_time=now
    )


def abandoned(order_id: str, attempt: str, now: datetime) -> Reservation:
    """The saga the sweeper stores for a hold whose order has none, before giving the hold back:
    the first attempt of a ReserveStock that died between its holds and its insert. Stored
    FAILED with that attempt, so the caller, if it is only late, finds its insert refused and
    cannot claim a hold that is gone; nothing is reserved (no lines)."""
    return Reservation(
        order_id=order_id,
        lines=(),
        phase=Phase.FAILED,
        attempt=attempt,
        create_time=now,
        update_time=now,
        expire_time=None,
    )


def retry(saga: Reservation, lines: Sequence[Line], now: datetime, ttl: timedelta) -> Move:
    """FAILED (nothing is held) → a new attempt with these lines."""
    return Move(
        saga,
        (Phase.FAILED,),
        now,
        {
            "phase": Phase.RESERVING,
            "attempt": _new_attempt(),
            "lines": tuple(lines),
            "create_time": now,
            "expire_time": now + ttl,
            "shortages": (),
        },
    )


def fail(saga: Reservation, shortages: Sequence[Shortage], now: datetime) -> Move:
    """A line was refused: the attempt gives back what it holds."""
    return Move(
        saga, (Phase.RESERVING,), now, {"phase": Phase.FAILING, "shortages": tuple(shortages)}
    )


def hold_all(saga: Reservation, now: datetime) -> Move:
    """Every line is held."""
    return Move(saga, (Phase.RESERVING,), now, {"phase": Phase.HELD, "was_held": True})


def start_commit(saga: Reservation, now: datetime) -> Move:
    return Move(saga, (Phase.HELD,), now, {"phase": Phase.COMMITTING})


def start_release(saga: Reservation, reason: str, now: datetime) -> Move:
    """ReleaseStock of a saga in a stable phase: give back what it holds or sold."""
    changes: dict[str, Any] = {
        "phase": Phase.RELEASING,
        "cause": ReleaseCause.REQUESTED,
        "reason": reason,
    }
    if saga.phase is Phase.COMMITTED:
        changes["was_committed"] = True
    if saga.phase is Phase.FAILED:
        # Nothing is held: close it (a later ReserveStock reserves nothing).
        changes["phase"] = Phase.RELEASED
        changes["lines"] = ()
    return Move(saga, (saga.phase,), now, changes)


def start_expiry(saga: Reservation, now: datetime) -> Move:
    """Past the deadline and never committed: give the held stock back."""
    return Move(
        saga,
        (Phase.RESERVING, Phase.HELD),
        now,
        {"phase": Phase.EXPIRING, "cause": ReleaseCause.EXPIRED},
    )


def settle(saga: Reservation, now: datetime, return_marker_retention: timedelta) -> Move:
    """The end of the step ``saga`` is in, once its stock movements are done. After returning
    sold units, their markers are kept for the retention."""
    target = _SETTLED[saga.phase]
    changes: dict[str, Any] = {"phase": target, "expire_time": None}
    if target is not Phase.COMMITTED and saga.was_committed:
        changes["cleanup_after"] = now + return_marker_retention
    return Move(saga, (saga.phase,), now, changes)


def owns(saga: Reservation | None, hold: Hold) -> bool:
    """Whether a product hold is legitimate: its order's saga is RESERVING, HELD or COMMITTING
    with the hold's attempt. Any other hold is an orphan (a straggler that held a line after
    the saga moved on, then died)."""
    return saga is not None and saga.attempt == hold.attempt and saga.phase.holds_are_live
