"""Catalog rules and types, free of gRPC and of any driver.

Errors (root :class:`CatalogError`, domain ``catalog.mercato``), the domain objects the store
returns (:class:`Product`, :class:`Category`, :class:`Reservation`), and the pure rules: how a
listing filter becomes a query document built only from typed values, opaque page tokens,
reservation line comparison, reservation state transitions and the low-stock crossing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, ClassVar

from mercato_common.errors import (
    Aborted,
    AlreadyExists,
    FailedPrecondition,
    FieldViolation,
    InvalidArgument,
    MercatoError,
    NotFound,
    PreconditionViolation,
)

# --- errors ---------------------------------------------------------------------------------


class CatalogError(MercatoError):
    """Root of the catalog's errors."""

    domain: ClassVar[str] = "catalog.mercato"


class ProductNotFound(CatalogError, NotFound):
    default_reason = "PRODUCT_NOT_FOUND"


class CategoryMissing(CatalogError, FailedPrecondition):
    """A write names a category that does not exist."""

    default_reason = "CATEGORY_NOT_FOUND"


class CategoryTooDeep(CatalogError, FailedPrecondition):
    default_reason = "CATEGORY_TOO_DEEP"


class SkuTaken(CatalogError, AlreadyExists):
    default_reason = "SKU_TAKEN"


class CategoryTaken(CatalogError, AlreadyExists):
    default_reason = "CATEGORY_TAKEN"


class EtagMismatch(CatalogError, Aborted):
    default_reason = "ETAG_MISMATCH"


class ConcurrentModification(CatalogError, Aborted):
    """Lost an optimistic-concurrency race too many times in a row; re-read and retry."""

    default_reason = "CONCURRENT_MODIFICATION"


class ProductArchived(CatalogError, FailedPrecondition):
    default_reason = "PRODUCT_ARCHIVED"


class StockLimitExceeded(CatalogError, FailedPrecondition):
    default_reason = "STOCK_LIMIT_EXCEEDED"


class InvalidRequest(CatalogError, InvalidArgument):
    default_reason = "INVALID_REQUEST"


class InvalidPageToken(CatalogError, InvalidArgument):
    default_reason = "INVALID_PAGE_TOKEN"


class ReservationNotFound(CatalogError, NotFound):
    default_reason = "RESERVATION_NOT_FOUND"


class ReservationMismatch(CatalogError, AlreadyExists):
    default_reason = "RESERVATION_MISMATCH"


class ReservationClosed(CatalogError, FailedPrecondition):
    default_reason = "RESERVATION_CLOSED"


class ReservationBusy(CatalogError, Aborted):
    """Another operation on the same reservation is half-way; retry shortly."""

    default_reason = "RESERVATION_IN_PROGRESS"


class ShortageKind(Enum):
    """Why one reservation line was refused (PreconditionFailure violation type)."""

    OUT_OF_STOCK = "OUT_OF_STOCK"
    NOT_FOUND = "NOT_FOUND"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True, slots=True)
class Shortage:
    sku: str
    kind: ShortageKind
    description: str


class StockUnavailable(CatalogError, FailedPrecondition):
    """Some lines cannot be reserved; nothing was reserved. ``shortages`` names them."""

    default_reason = "STOCK_UNAVAILABLE"

    def __init__(self, shortages: Sequence[Shortage]) -> None:
        self.shortages = tuple(shortages)
        super().__init__(
            "stock is unavailable for " + ", ".join(s.sku for s in self.shortages),
            metadata={
                "skus": ",".join(s.sku for s in self.shortages),
                "types": ",".join(s.kind.value for s in self.shortages),
            },
            precondition_violations=[
                PreconditionViolation(s.kind.value, s.sku, s.description) for s in self.shortages
            ],
        )


# --- values ---------------------------------------------------------------------------------

SKU_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,63}$")
SLUG_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")
ATTRIBUTE_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_CATEGORY_DEPTH = 5
MAX_STOCK = 2**31 - 1
MAX_PRICE_MINOR = 10**12
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
UPDATABLE_FIELDS = frozenset({"name", "description", "category_id", "price", "attributes"})


@dataclass(frozen=True, slots=True)
class Money:
    currency_code: str
    amount_minor: int

    def __post_init__(self) -> None:
        if not isinstance(self.currency_code, str) or not CURRENCY_PATTERN.match(
            self.currency_code
        ):
            raise InvalidRequest(
                "price currency must be an ISO 4217 code",
                field_violations=[FieldViolation("price.currency_code", "must match ^[A-Z]{3}$")],
            )
        if type(self.amount_minor) is not int or not 0 <= self.amount_minor <= MAX_PRICE_MINOR:
            raise InvalidRequest(
                "price out of range",
                field_violations=[
                    FieldViolation("price.amount_minor", "must be between 0 and 10^12")
                ],
            )


class ProductState(Enum):
    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"


@dataclass(frozen=True, slots=True)
class Product:
    sku: str
    name: str
    description: str
    category_id: str
    price: Money
    attributes: Mapping[str, str]
    state: ProductState
    stock_on_hand: int
    stock_reserved: int
    etag: str
    version: int
    create_time: datetime
    update_time: datetime
    archive_time: datetime | None = None

    @property
    def stock_available(self) -> int:
        return self.stock_on_hand - self.stock_reserved


@dataclass(frozen=True, slots=True)
class NewProduct:
    """What CreateProduct accepts (validated again here: defence in depth)."""

    sku: str
    name: str
    description: str
    category_id: str
    price: Money
    attributes: Mapping[str, str]

    def __post_init__(self) -> None:
        check_sku(self.sku, "product.sku")
        check_attributes(self.attributes)
        if self.category_id:
            check_slug(self.category_id, "product.category_id")


@dataclass(frozen=True, slots=True)
class ProductChanges:
    """UpdateProduct: the masked fields and their new values."""

    fields: frozenset[str]
    name: str = ""
    description: str = ""
    category_id: str = ""
    price: Money | None = None
    attributes: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        unknown = self.fields - UPDATABLE_FIELDS
        if unknown or not self.fields:
            raise InvalidRequest(
                "update_mask must name some of " + ", ".join(sorted(UPDATABLE_FIELDS)),
                field_violations=[FieldViolation("update_mask", "unknown or empty paths")],
            )
        if "name" in self.fields and not self.name:
            raise InvalidRequest(
                "name must not be empty",
                field_violations=[FieldViolation("product.name", "required by update_mask")],
            )
        if "price" in self.fields and self.price is None:
            raise InvalidRequest(
                "price is required",
                field_violations=[FieldViolation("product.price", "required by update_mask")],
            )
        if "attributes" in self.fields:
            check_attributes(self.attributes)
        if "category_id" in self.fields and self.category_id:
            check_slug(self.category_id, "product.category_id")


@dataclass(frozen=True, slots=True)
class Category:
    id: str
    display_name: str
    parent_id: str
    ancestor_ids: tuple[str, ...]
    create_time: datetime

    @property
    def path(self) -> tuple[str, ...]:
        """Ancestors then itself: what a product in this category is filed under."""
        return (*self.ancestor_ids, self.id)


def category_ancestors(parent: Category | None) -> tuple[str, ...]:
    """The ancestor ids of a new child of ``parent``; refuses trees deeper than 5 levels."""
    if parent is None:
        return ()
    ancestors = parent.path
    if len(ancestors) >= MAX_CATEGORY_DEPTH:
        raise CategoryTooDeep(
            f"categories nest at most {MAX_CATEGORY_DEPTH} levels deep",
            metadata={"parent_id": parent.id},
        )
    return ancestors


def check_sku(value: object, field_path: str = "sku") -> str:
    if not isinstance(value, str) or not SKU_PATTERN.match(value):
        raise InvalidRequest(
            "invalid SKU",
            field_violations=[FieldViolation(field_path, "must match ^[A-Z0-9][A-Z0-9-]{1,63}$")],
        )
    return value


def check_slug(value: object, field_path: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not SLUG_PATTERN.match(value):
        raise InvalidRequest(
            "invalid category id",
            field_violations=[FieldViolation(field_path, "must be a lower-case slug")],
        )
    return value


def check_attributes(attributes: Mapping[str, str]) -> None:
    """Attribute keys become document keys: they must never carry ``$`` or ``.``."""
    for key, value in attributes.items():
        if not isinstance(key, str) or not ATTRIBUTE_KEY_PATTERN.match(key):
            raise InvalidRequest(
                "invalid attribute key",
                field_violations=[
                    FieldViolation(f"product.attributes[{key!r}]", "key must be lower_snake_case")
                ],
            )
        if not isinstance(value, str):
            raise InvalidRequest(
                "attribute values are strings",
                field_violations=[FieldViolation(f"product.attributes[{key!r}]", "not a string")],
            )


def new_etag(version: int) -> str:
    """The opaque etag of a product's field version."""
    return f'W/"{version}"'


# --- listing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProductFilter:
    """ListProducts filters, typed. Build the query with :func:`product_query`."""

    state: ProductState = ProductState.ACTIVE
    category: str = ""
    q: str = ""
    currency_code: str = ""
    min_price_minor: int | None = None
    max_price_minor: int | None = None

    def __post_init__(self) -> None:
        for name in ("category", "q", "currency_code"):
            if not isinstance(getattr(self, name), str):
                raise InvalidRequest(
                    f"{name} must be a string",
                    field_violations=[FieldViolation(name, "must be a string")],
                )
        for name in ("min_price_minor", "max_price_minor"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise InvalidRequest(
                    f"{name} must be a non-negative integer",
                    field_violations=[FieldViolation(name, "must be >= 0")],
                )
        if self.category:
            check_slug(self.category, "category")
        if len(self.q) > 100 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.q):
            raise InvalidRequest(
                "q is too long or has control characters",
                field_violations=[FieldViolation("q", "at most 100 printable characters")],
            )
        has_bound = self.min_price_minor is not None or self.max_price_minor is not None
        if self.currency_code and not CURRENCY_PATTERN.match(self.currency_code):
            raise InvalidRequest(
                "invalid currency code",
                field_violations=[FieldViolation("currency_code", "must match ^[A-Z]{3}$")],
            )
        if has_bound and not self.currency_code:
            raise InvalidRequest(
                "currency_code is required with a price bound",
                field_violations=[FieldViolation("currency_code", "required with a price bound")],
            )
        if (
            self.min_price_minor is not None
            and self.max_price_minor is not None
            and self.min_price_minor > self.max_price_minor
        ):
            raise InvalidRequest(
                "min_price_minor must not exceed max_price_minor",
                field_violations=[FieldViolation("min_price_minor", "greater than max")],
            )

    def fingerprint(self) -> str:
        """Identifies the filters, so a page token cannot be replayed with other ones."""
        canonical = json.dumps(
            [
                self.state.value,
                self.category,
                self.q,
                self.currency_code,
                self.min_price_minor,
                self.max_price_minor,
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def literal_pattern(text: str) -> str:
    """A regular expression matching ``text`` literally (user input is never a pattern)."""
    return re.escape(text)


def product_query(flt: ProductFilter, after_sku: str | None) -> dict[str, Any]:
    """The MongoDB filter of a listing page. Every value is a typed scalar from ``flt``, never a
    caller-supplied document, so no input can become an operator."""
    query: dict[str, Any] = {"state": flt.state.value}
    if flt.category:
        query["category_path"] = str(flt.category)
    if flt.q:
        query["name"] = {"$regex": literal_pattern(str(flt.q)), "$options": "i"}
    if flt.min_price_minor is not None or flt.max_price_minor is not None:
        query["price_currency"] = str(flt.currency_code)
        bounds: dict[str, int] = {}
        if flt.min_price_minor is not None:
            bounds["$gte"] = int(flt.min_price_minor)
        if flt.max_price_minor is not None:
            bounds["$lte"] = int(flt.max_price_minor)
        query["price_minor"] = bounds
    if after_sku is not None:
        query["_id"] = {"$gt": check_sku(after_sku, "page_token")}
    return query


def page_size(requested: int, default: int = DEFAULT_PAGE_SIZE) -> int:
    if type(requested) is not int or requested < 0:
        raise InvalidRequest(
            "page_size must be between 0 and 100",
            field_violations=[FieldViolation("page_size", "must be between 0 and 100")],
        )
    return default if requested == 0 else min(requested, MAX_PAGE_SIZE)


def encode_page_token(kind: str, position: Mapping[str, str | int], fingerprint: str = "") -> str:
    body = {"k": kind, "p": dict(position), "f": fingerprint}
    raw = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(
    token: str, kind: str, fields: Mapping[str, type], fingerprint: str = ""
) -> dict[str, Any] | None:
    """The position in a token made by :func:`encode_page_token`, checked field by field.

    None for an empty token. A token of another listing, of other filters, or whose values
    are not exactly the expected scalar types is INVALID_ARGUMENT.
    """
    if not token:
        return None
    bad = InvalidPageToken(
        "page_token is invalid or does not belong to these filters",
        field_violations=[FieldViolation("page_token", "not a token of this listing")],
    )
    if not isinstance(token, str) or len(token) > 1024:
        raise bad
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        body = json.loads(raw)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise bad from None
    if not isinstance(body, dict) or body.get("k") != kind or body.get("f") != fingerprint:
        raise bad
    position = body.get("p")
    if not isinstance(position, dict) or set(position) != set(fields):
        raise bad
    for name, expected in fields.items():
        if type(position[name]) is not expected:
            raise bad
    return position


# --- reservations ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Line:
    sku: str
    quantity: int

    def __post_init__(self) -> None:
        check_sku(self.sku, "lines.sku")
        if type(self.quantity) is not int or not 1 <= self.quantity <= 1000:
            raise InvalidRequest(
                "quantity must be between 1 and 1000",
                field_violations=[FieldViolation("lines.quantity", "must be between 1 and 1000")],
            )


def check_lines(lines: Sequence[Line]) -> tuple[Line, ...]:
    if not 1 <= len(lines) <= 100:
        raise InvalidRequest(
            "a reservation has 1-100 lines",
            field_violations=[FieldViolation("lines", "must have 1-100 items")],
        )
    skus = [line.sku for line in lines]
    if len(set(skus)) != len(skus):
        raise InvalidRequest(
            "lines must have distinct SKUs",
            field_violations=[FieldViolation("lines", "SKUs must be distinct")],
        )
    return tuple(lines)


def same_lines(a: Sequence[Line], b: Sequence[Line]) -> bool:
    """Whether two requests reserve the same things (order of lines does not matter)."""
    return sorted((x.sku, x.quantity) for x in a) == sorted((x.sku, x.quantity) for x in b)


class Phase(Enum):
    """Where an order's reservation (the saga record) stands.

    Stable phases: HELD, COMMITTED, RELEASED, EXPIRED, FAILED. The others are a step in
    progress, finished by whoever finds it (the caller, a retry or the sweeper): every step
    is idempotent per product, so finishing twice is harmless.
    """

    RESERVING = "RESERVING"  # holding the lines one by one
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
    def closed(self) -> bool:
        """Released or expired (or on the way): a later ReserveStock reserves nothing."""
        return self in (Phase.RELEASING, Phase.RELEASED, Phase.EXPIRING, Phase.EXPIRED)


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
    attempt: str
    create_time: datetime
    update_time: datetime
    expire_time: datetime | None
    was_committed: bool = False
    shortages: tuple[Shortage, ...] = ()

    @property
    def state(self) -> ReservationState | None:
        return public_state(self.phase)


def hold_key(order_id: str) -> str:
    """The key of an order's entry in a product's ``holds``/``returns`` maps.

    Prefixed so that it is never empty, numeric-looking or an operator; order ids are
    validated UUIDs before they get here.
    """
    return "o_" + order_id.replace("-", "")


# --- low stock ------------------------------------------------------------------------------


def low_stock_transition(flagged: bool, available: int, threshold: int) -> bool | None:
    """New value of a product's low-stock flag, or None when it does not change.

    True means available stock just fell below ``threshold`` (emit StockLow once); False
    means it recovered (re-arm). A threshold of 0 or less disables the alert.
    """
    if threshold <= 0:
        return None
    low = available < threshold
    if low and not flagged:
        return True
    if flagged and not low:
        return False
    return None
