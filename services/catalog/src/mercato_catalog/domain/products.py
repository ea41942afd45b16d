"""Products and categories: their values, validation and the changes a write makes to them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import Enum

from mercato_catalog.domain.errors import (
    CategoryTooDeep,
    EtagMismatch,
    ProductArchived,
    invalid,
)
from mercato_common.paging import unknown_mask_paths

__all__ = [
    "MAX_CATEGORY_DEPTH",
    "MAX_PRICE_MINOR",
    "UPDATABLE_FIELDS",
    "Category",
    "Money",
    "NewProduct",
    "Product",
    "ProductChanges",
    "ProductState",
    "archived",
    "category_ancestors",
    "changed",
    "check_attributes",
    "check_currency",
    "check_etag",
    "check_sku",
    "check_slug",
    "etag_version",
    "new_etag",
    "new_product",
]

SKU_PATTERN = re.compile(r"^[A-Z0-9][A-Z0-9-]{1,63}$")
SLUG_PATTERN = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
CURRENCY_PATTERN = re.compile(r"^[A-Z]{3}$")
ATTRIBUTE_KEY_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
MAX_CATEGORY_DEPTH = 5
MAX_PRICE_MINOR = 10**12
UPDATABLE_FIELDS = frozenset({"name", "description", "category_id", "price", "attributes"})


def check_sku(value: object, field_path: str = "sku") -> str:
    if not isinstance(value, str) or not SKU_PATTERN.match(value):
        raise invalid("invalid SKU", field_path, "must match ^[A-Z0-9][A-Z0-9-]{1,63}$")
    return value


def check_slug(value: object, field_path: str) -> str:
    if not isinstance(value, str) or len(value) > 64 or not SLUG_PATTERN.match(value):
        raise invalid("invalid category id", field_path, "must be a lower-case slug")
    return value


def check_currency(value: object, field_path: str, message: str) -> str:
    if not isinstance(value, str) or not CURRENCY_PATTERN.match(value):
        raise invalid(message, field_path, "must match ^[A-Z]{3}$")
    return value


def check_attributes(attributes: Mapping[str, str]) -> None:
    """Attribute keys become document keys: they must never carry ``$`` or ``.``."""
    for key, value in attributes.items():
        where = f"product.attributes[{key!r}]"
        if not isinstance(key, str) or not ATTRIBUTE_KEY_PATTERN.match(key):
            raise invalid("invalid attribute key", where, "key must be lower_snake_case")
        if not isinstance(value, str):
            raise invalid("attribute values are strings", where, "not a string")


@dataclass(frozen=True, slots=True)
class Money:
    currency_code: str
    amount_minor: int

    def __post_init__(self) -> None:
        check_currency(
            self.currency_code, "price.currency_code", "price currency must be an ISO 4217 code"
        )
        if type(self.amount_minor) is not int or not 0 <= self.amount_minor <= MAX_PRICE_MINOR:
            raise invalid("price out of range", "price.amount_minor", "must be between 0 and 10^12")


class ProductState(Enum):
    ACTIVE = "ACTIVE"
    ARCHIVED = "ARCHIVED"


def new_etag(version: int) -> str:
    """The opaque etag of a product's field version."""
    return f'W/"{version}"'


def etag_version(etag: str) -> int:
    """The field version an etag made by :func:`new_etag` stands for."""
    return int(etag[3:-1])


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
    etag: str  # versions the product's own fields (not its stock)
    version: int  # versions any change of the product (the cache's version)
    create_time: datetime
    update_time: datetime
    archive_time: datetime | None = None
    low_stock: bool = False  # StockLow was emitted and stock has not recovered since

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
        if unknown_mask_paths(self.fields, UPDATABLE_FIELDS) or not self.fields:
            raise invalid(
                "update_mask must name some of " + ", ".join(sorted(UPDATABLE_FIELDS)),
                "update_mask",
                "unknown or empty paths",
            )
        if "name" in self.fields and not self.name:
            raise invalid("name must not be empty", "product.name", "required by update_mask")
        if "price" in self.fields and self.price is None:
            raise invalid("price is required", "product.price", "required by update_mask")
        if "attributes" in self.fields:
            check_attributes(self.attributes)
        if "category_id" in self.fields and self.category_id:
            check_slug(self.category_id, "product.category_id")


def new_product(new: NewProduct, now: datetime, *, low_stock_threshold: int) -> Product:
    """A product as created: active, no stock, field version 1."""
    return Product(
        sku=new.sku,
        name=new.name,
        description=new.description,
        category_id=new.category_id,
        price=new.price,
        attributes=dict(new.attributes),
        state=ProductState.ACTIVE,
        stock_on_hand=0,
        stock_reserved=0,
        etag=new_etag(1),
        version=1,
        create_time=now,
        update_time=now,
        # Created without stock: already "low", so no StockLow until it recovers first.
        low_stock=low_stock_threshold > 0,
    )


def check_etag(product: Product, etag: str) -> None:
    """An etag given with a write must be the current one (an empty one skips the check)."""
    if etag and etag != product.etag:
        raise EtagMismatch(
            "the product changed since it was read; re-read it and retry",
            metadata={"sku": product.sku, "current_etag": product.etag},
        )


def _next_fields_version(product: Product, now: datetime) -> Product:
    return replace(product, etag=new_etag(etag_version(product.etag) + 1), update_time=now)


def changed(product: Product, changes: ProductChanges, now: datetime) -> Product:
    """The product with the masked fields of an UpdateProduct applied (archived ones refuse)."""
    if product.state is ProductState.ARCHIVED:
        raise ProductArchived(f"product {product.sku!r} is archived", metadata={"sku": product.sku})
    wanted = changes.fields
    return replace(
        _next_fields_version(product, now),
        name=changes.name if "name" in wanted else product.name,
        description=changes.description if "description" in wanted else product.description,
        category_id=changes.category_id if "category_id" in wanted else product.category_id,
        price=changes.price if changes.price is not None and "price" in wanted else product.price,
        attributes=dict(changes.attributes) if "attributes" in wanted else product.attributes,
    )


def archived(product: Product, now: datetime) -> Product:
    return replace(
        _next_fields_version(product, now), state=ProductState.ARCHIVED, archive_time=now
    )


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
