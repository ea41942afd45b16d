"""What a listing request means: product filters, page sizes and page tokens (AIP-158).

Page sizes and tokens are the shared ``mercato_common.paging`` rules with the catalog's own
errors (INVALID_REQUEST, INVALID_PAGE_TOKEN).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from mercato_catalog.domain.errors import InvalidPageToken, invalid
from mercato_catalog.domain.products import (
    ProductState,
    check_currency,
    check_sku,
    check_slug,
)
from mercato_catalog.domain.reservations import ReservationState
from mercato_common import paging
from mercato_common.errors import FieldViolation

__all__ = [
    "DEFAULT_PAGE_SIZE",
    "MAX_PAGE_SIZE",
    "MAX_RESERVATIONS_PAGE_SIZE",
    "ProductFilter",
    "ReservationFilter",
    "decode_page_token",
    "encode_page_token",
    "page_size",
]

DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
# ListReservations is internal (the orders reconciler): larger pages, so that a scan after a load
# reads a minute's reservations in a few pages (each page reads its minute whole, see the store).
MAX_RESERVATIONS_PAGE_SIZE = 1000
#: At most this many SKUs in one ``skus`` filter (one page of them).
MAX_FILTER_SKUS = 100


@dataclass(frozen=True, slots=True)
class ProductFilter:
    """ListProducts filters, typed; the store builds its query from these values only."""

    state: ProductState = ProductState.ACTIVE
    category: str = ""
    q: str = ""
    currency_code: str = ""
    min_price_minor: int | None = None
    max_price_minor: int | None = None
    #: Only these products (none: any); at most MAX_FILTER_SKUS, distinct.
    skus: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.skus) > MAX_FILTER_SKUS:
            raise invalid(
                f"skus takes at most {MAX_FILTER_SKUS} SKUs", "skus", f"at most {MAX_FILTER_SKUS}"
            )
        for index, sku in enumerate(self.skus):
            check_sku(sku, f"skus[{index}]")
        if len(set(self.skus)) != len(self.skus):
            raise invalid("skus must be distinct", "skus", "must be distinct")
        for name in ("category", "q", "currency_code"):
            if not isinstance(getattr(self, name), str):
                raise invalid(f"{name} must be a string", name, "must be a string")
        for name in ("min_price_minor", "max_price_minor"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value < 0):
                raise invalid(f"{name} must be a non-negative integer", name, "must be >= 0")
        if self.category:
            check_slug(self.category, "category")
        if len(self.q) > 100 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in self.q):
            raise invalid(
                "q is too long or has control characters",
                "q",
                "at most 100 printable characters",
            )
        if self.currency_code:
            check_currency(self.currency_code, "currency_code", "invalid currency code")
        if self.has_price_bound and not self.currency_code:
            raise invalid(
                "currency_code is required with a price bound",
                "currency_code",
                "required with a price bound",
            )
        if (
            self.min_price_minor is not None
            and self.max_price_minor is not None
            and self.min_price_minor > self.max_price_minor
        ):
            raise invalid(
                "min_price_minor must not exceed max_price_minor",
                "min_price_minor",
                "greater than max",
            )

    @property
    def has_price_bound(self) -> bool:
        return self.min_price_minor is not None or self.max_price_minor is not None

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
                sorted(self.skus),
            ],
            separators=(",", ":"),
        )
        return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class ReservationFilter:
    """ListReservations filters: a public state (None: any) and creation time bounds
    (``created_after`` inclusive, ``created_before`` exclusive)."""

    state: ReservationState | None = None
    created_before: datetime | None = None
    created_after: datetime | None = None

    def fingerprint(self) -> str:
        """Identifies the filters, so a page token cannot be replayed with other ones."""
        before = to_ms(self.created_before) if self.created_before else ""
        filters = f"{self.state.value if self.state else ''}|{before}"
        if self.created_after:  # appended only when set: tokens of the older filters stay valid
            filters += f"|{to_ms(self.created_after)}"
        return hashlib.sha256(filters.encode()).hexdigest()[:16]


def to_ms(when: datetime) -> int:
    """A time as the milliseconds a page token keeps."""
    return int(when.timestamp() * 1000)


def page_size(
    requested: int, default: int = DEFAULT_PAGE_SIZE, maximum: int = MAX_PAGE_SIZE
) -> int:
    """``default`` for 0, at most ``maximum`` (a larger request is coerced), negative refused."""
    return paging.page_size(
        requested,
        default=default,
        maximum=maximum,
        invalid=lambda message: invalid(message, "page_size", f"must be between 0 and {maximum}"),
    )


def _invalid_token() -> InvalidPageToken:
    return InvalidPageToken(
        "page_token is invalid or does not belong to these filters",
        field_violations=[FieldViolation("page_token", "not a token of this listing")],
    )


def encode_page_token(kind: str, position: Mapping[str, str | int], fingerprint: str = "") -> str:
    return paging.encode_page_token(kind, position, fingerprint)


def decode_page_token(
    token: str, kind: str, fields: Mapping[str, type], fingerprint: str = ""
) -> dict[str, Any] | None:
    """The position in a token of listing ``kind`` under these filters; None for no token.

    A token of another listing, of other filters, or whose values are not exactly the expected
    scalar types is INVALID_ARGUMENT (INVALID_PAGE_TOKEN).
    """
    return paging.decode_page_token(
        token, kind=kind, fields=fields, fingerprint=fingerprint, invalid=_invalid_token
    )
