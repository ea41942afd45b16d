"""The rules of placing, paying, cancelling, fulfilling and reading orders. Pure functions.

* Lines: 1-100 lines, quantities 1-1000, SKUs ``^[A-Z0-9][A-Z0-9-]{1,63}$``; duplicate SKUs are
  **refused** (INVALID_ARGUMENT naming the repeated line), never merged: a client that sends the
  same SKU twice most likely has a bug, and merging would make two different bodies one request.
* Request fingerprint: SHA-256 of the canonical lines (sorted by SKU), so the same lines in
  another order are the same request, and any other SKU or quantity is a different one.
* Prices come from the catalog (:class:`ProductInfo`), never from the client; totals are integer
  minor units of one currency (``MIXED_CURRENCIES`` otherwise) and must fit in int64.
* Visibility: an order is visible to its owner and to holders of ``orders:admin``; to anyone
  else it does not exist (NOT_FOUND).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from mercato_common import paging
from mercato_common.errors import FieldViolation
from mercato_orders.domain.errors import (
    AmountMismatch,
    InvalidPageToken,
    InvalidRequest,
    InvalidStateTransition,
    MixedCurrencies,
    PermissionRequired,
    ProductLimitExceeded,
    Shortage,
    ShortageKind,
    StockUnavailable,
    TooManyOpenOrders,
)
from mercato_orders.domain.model import (
    SYSTEM_ACTOR,
    Money,
    Order,
    OrderLine,
    OrderState,
    RequestedLine,
    StateChange,
    sum_money,
    transition,
)

__all__ = [
    "ADMIN_SCOPE",
    "DEFAULT_PAGE_SIZE",
    "MAX_LINES",
    "MAX_PAGE_SIZE",
    "MAX_QUANTITY",
    "OrderFilter",
    "PageToken",
    "ProductInfo",
    "UserHoldings",
    "UserLimits",
    "Viewer",
    "cancel",
    "check_amount",
    "check_idempotency_key",
    "check_lines",
    "check_payable",
    "check_user_limits",
    "decode_page_token",
    "encode_page_token",
    "fail",
    "fulfil",
    "list_filter",
    "new_order",
    "page_size",
    "pay",
    "price_lines",
    "request_fingerprint",
    "visible",
]

MAX_LINES = 100
MAX_QUANTITY = 1000
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
ADMIN_SCOPE = "orders:admin"
SKU_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,63}$")
KEY_PATTERN = re.compile(r"^[!-~]{1,255}$")
USER_ID_PATTERN = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
FINGERPRINT_VERSION = "v1"


# --- placing ----------------------------------------------------------------------------------


def check_lines(lines: Sequence[RequestedLine]) -> tuple[RequestedLine, ...]:
    """The lines if they are a valid order body; else INVALID_ARGUMENT naming every bad field."""
    violations: list[FieldViolation] = []
    if not 1 <= len(lines) <= MAX_LINES:
        violations.append(FieldViolation("order.lines", f"1-{MAX_LINES} lines"))
    seen: dict[str, int] = {}
    for index, line in enumerate(lines):
        where = f"order.lines[{index}]"
        if not SKU_PATTERN.fullmatch(line.sku):
            violations.append(FieldViolation(f"{where}.sku", "not a SKU"))
        if not 1 <= line.quantity <= MAX_QUANTITY:
            violations.append(FieldViolation(f"{where}.quantity", f"1-{MAX_QUANTITY} units"))
        if line.sku in seen:
            violations.append(
                FieldViolation(
                    f"{where}.sku",
                    f"duplicate of order.lines[{seen[line.sku]}]: lines must have distinct SKUs",
                )
            )
        else:
            seen[line.sku] = index
    if violations:
        raise InvalidRequest("the order lines are invalid", violations)
    return tuple(lines)


def check_idempotency_key(key: str) -> str:
    if not KEY_PATTERN.fullmatch(key):
        raise InvalidRequest(
            "the idempotency key is invalid",
            [FieldViolation("idempotency_key", "1-255 visible ASCII characters")],
        )
    return key


def request_fingerprint(lines: Sequence[RequestedLine]) -> str:
    """Identifies a create request's body: same lines (in any order) → same fingerprint."""
    canonical = json.dumps(
        sorted([line.sku, line.quantity] for line in lines), separators=(",", ":")
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{FINGERPRINT_VERSION}:{digest}"


@dataclass(frozen=True, slots=True)
class ProductInfo:
    """What the catalog says about a product right now (BatchGetProducts)."""

    sku: str
    name: str
    price: Money
    active: bool
    available: int


def price_lines(
    requested: Sequence[RequestedLine],
    products: Mapping[str, ProductInfo],
    *,
    check_availability: bool = True,
) -> tuple[tuple[OrderLine, ...], Money]:
    """Priced lines and the total, from the catalog's current prices.

    Refuses (nothing reserved yet) unknown, archived and visibly out-of-stock lines all at once
    with :class:`StockUnavailable`, and several currencies with :class:`MixedCurrencies`. The
    availability check is advisory (the reservation decides); it is skipped when the order may
    already hold its stock (a create taken over from one that died after reserving).
    """
    shortages: list[Shortage] = []
    for line in requested:
        product = products.get(line.sku)
        if product is None:
            shortages.append(Shortage(line.sku, ShortageKind.NOT_FOUND, "no such product"))
        elif not product.active:
            shortages.append(Shortage(line.sku, ShortageKind.ARCHIVED, "the product is archived"))
        elif check_availability and product.available < line.quantity:
            shortages.append(
                Shortage(
                    line.sku,
                    ShortageKind.OUT_OF_STOCK,
                    f"{product.available} available, {line.quantity} requested",
                )
            )
    if shortages:
        raise StockUnavailable(shortages)
    currencies = sorted({products[line.sku].price.currency_code for line in requested})
    if len(currencies) > 1:
        raise MixedCurrencies(currencies)
    lines = tuple(
        OrderLine(
            sku=line.sku,
            quantity=line.quantity,
            product_name=products[line.sku].name,
            unit_price=products[line.sku].price,
        )
        for line in requested
    )
    return lines, sum_money([line.line_total for line in lines])


def new_order(
    *,
    order_id: str,
    user_id: str,
    idempotency_key: str,
    lines: Sequence[OrderLine],
    total: Money,
    accepted_at: datetime,
    confirmed_at: datetime,
) -> Order:
    """A placed order: CONFIRMED (stock reserved), with its PENDING and CONFIRMED history."""
    return Order(
        id=order_id,
        user_id=user_id,
        state=OrderState.CONFIRMED,
        lines=tuple(lines),
        total=total,
        create_time=accepted_at,
        update_time=confirmed_at,
        idempotency_key=idempotency_key,
        history=(
            StateChange(None, OrderState.PENDING, accepted_at, user_id),
            StateChange(
                OrderState.PENDING,
                OrderState.CONFIRMED,
                confirmed_at,
                SYSTEM_ACTOR,
                "stock reserved",
            ),
        ),
    )


# --- changes ----------------------------------------------------------------------------------


def check_amount(order: Order, amount: Money) -> None:
    """A payment must be for exactly the order's total, in its currency."""
    if amount != order.total:
        raise AmountMismatch(order.total.currency_code, order.total.amount_minor)


def check_payable(order: Order) -> None:
    if order.state is not OrderState.CONFIRMED:
        raise InvalidStateTransition(order.state, "pay")


def pay(order: Order, *, payment_id: str, actor: str, now: datetime) -> Order:
    return transition(
        order, OrderState.PAID, actor=actor, now=now, action="pay", payment_id=payment_id
    )


def cancel(order: Order, *, actor: str, reason: str, now: datetime) -> Order | None:
    """The cancelled order, or None if it already is (cancelling twice changes nothing).

    The reservation is owed back to the catalog (held stock released, sold stock returned), and
    a paid order is owed a refund.
    """
    if order.state is OrderState.CANCELLED:
        return None
    return transition(
        order,
        OrderState.CANCELLED,
        actor=actor,
        now=now,
        action="cancel",
        reason=reason,
        state_reason=reason or "cancelled",
        release_pending=True,
        refund_pending=order.state is OrderState.PAID,
    )


def fulfil(order: Order, *, actor: str, shipment_reference: str, now: datetime) -> Order | None:
    """The fulfilled order, or None if it already is (fulfilling twice changes nothing)."""
    if order.state is OrderState.FULFILLED:
        return None
    return transition(
        order,
        OrderState.FULFILLED,
        actor=actor,
        now=now,
        action="fulfil",
        shipment_reference=shipment_reference,
    )


def fail(order: Order, *, reason: str, now: datetime, release: bool = False) -> Order:
    """The order could not proceed (e.g. its reservation lapsed): FAILED, by "system"."""
    return transition(
        order,
        OrderState.FAILED,
        actor=SYSTEM_ACTOR,
        now=now,
        action="fail",
        reason=reason,
        state_reason=reason,
        release_pending=release,
    )


# --- reading ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who asks: the token's subject and whether it holds ``orders:admin``."""

    subject: str
    admin: bool = False


def visible(order: Order, viewer: Viewer) -> bool:
    return viewer.admin or order.user_id == viewer.subject


@dataclass(frozen=True, slots=True)
class OrderFilter:
    """Which orders a listing returns. ``user_id`` None means every user's."""

    user_id: str | None
    state: OrderState | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None

    def fingerprint(self) -> str:
        parts = [
            self.user_id or "*",
            self.state.value if self.state else "",
            self.created_after.isoformat() if self.created_after else "",
            self.created_before.isoformat() if self.created_before else "",
        ]
        return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def list_filter(
    viewer: Viewer,
    *,
    user_id: str,
    state: OrderState | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> OrderFilter:
    """``user_id`` "" = the caller's own; "-" = everyone's and a UUID = that user's (admin)."""
    if created_after and created_before and created_after >= created_before:
        raise InvalidRequest(
            "created_after must be before created_before",
            [FieldViolation("created_after", "must be before created_before")],
        )
    if user_id == "":
        owner: str | None = viewer.subject
    elif not viewer.admin:
        raise PermissionRequired(ADMIN_SCOPE, "listing other users' orders")
    elif user_id == "-":
        owner = None
    elif USER_ID_PATTERN.fullmatch(user_id):
        owner = user_id.lower()
    else:
        raise InvalidRequest(
            "user_id is invalid", [FieldViolation("user_id", 'empty, "-" or a user id (UUID)')]
        )
    return OrderFilter(owner, state, created_after, created_before)


def page_size(size: int) -> int:
    """0 → the default page size; above the maximum → the maximum (AIP-158)."""
    bad = InvalidRequest.for_field("page_size")
    return paging.page_size(size, default=DEFAULT_PAGE_SIZE, maximum=MAX_PAGE_SIZE, invalid=bad)


@dataclass(frozen=True, slots=True)
class PageToken:
    """Position after the last order of a page (newest first: create_time, then id, desc)."""

    create_time: datetime
    order_id: str


# The listing a page token belongs to, and the fields of its position.
_LISTING = "orders"
_POSITION = {"t": str, "i": str}


def encode_page_token(position: PageToken, flt: OrderFilter) -> str:
    at = {"t": position.create_time.astimezone(UTC).isoformat(), "i": position.order_id}
    return paging.encode_page_token(_LISTING, at, flt.fingerprint())


def decode_page_token(token: str, flt: OrderFilter) -> PageToken | None:
    """None for the first page; :class:`InvalidPageToken` if malformed or of other filters."""
    at = paging.decode_page_token(
        token,
        kind=_LISTING,
        fields=_POSITION,
        fingerprint=flt.fingerprint(),
        invalid=InvalidPageToken,
    )
    if at is None:
        return None
    try:
        when = datetime.fromisoformat(at["t"])
    except ValueError:
        raise InvalidPageToken() from None
    # Order ids are UUIDs, like user ids.
    if when.tzinfo is None or not USER_ID_PATTERN.fullmatch(at["i"]):
        raise InvalidPageToken()
    return PageToken(when, at["i"].lower())


@dataclass(frozen=True, slots=True)
class UserLimits:
    """Caps against one user hoarding stock with unpaid orders (0: no cap)."""

    max_open_orders: int = 0
    max_units_per_product: int = 0

    @property
    def any(self) -> bool:
        return bool(self.max_open_orders or self.max_units_per_product)


@dataclass(frozen=True, slots=True)
class UserHoldings:
    """What a user's unpaid (CONFIRMED) orders and other creates in progress hold."""

    open_orders: int
    creates_in_progress: int
    units: Mapping[str, int]  # by SKU, of the SKUs asked about


def check_user_limits(
    lines: Sequence[RequestedLine], holdings: UserHoldings, limits: UserLimits
) -> None:
    """Refuse an order that would take the user over a cap: ``TooManyOpenOrders`` when the user
    already has ``max_open_orders`` unpaid orders and creates in progress, else
    ``ProductLimitExceeded`` naming each SKU whose units would exceed ``max_units_per_product``."""
    if limits.max_open_orders:
        open_orders = holdings.open_orders + holdings.creates_in_progress
        if open_orders >= limits.max_open_orders:
            raise TooManyOpenOrders(limits.max_open_orders)
    if limits.max_units_per_product:
        over = [
            line.sku
            for line in lines
            if holdings.units.get(line.sku, 0) + line.quantity > limits.max_units_per_product
        ]
        if over:
            raise ProductLimitExceeded(over, limits.max_units_per_product)
