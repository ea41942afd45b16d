"""Pure rules of the catalog: filters, page tokens, validation, lines, phases, low stock."""

from __future__ import annotations

import base64
import json

import pytest

from mercato_catalog.domain.errors import (
    CategoryTooDeep,
    InvalidPageToken,
    InvalidRequest,
    Shortage,
    ShortageKind,
    StockUnavailable,
)
from mercato_catalog.domain.listing import (
    ProductFilter,
    decode_page_token,
    encode_page_token,
    page_size,
)
from mercato_catalog.domain.products import (
    Category,
    Money,
    NewProduct,
    ProductChanges,
    category_ancestors,
)
from mercato_catalog.domain.reservations import (
    Line,
    Phase,
    ReservationState,
    check_lines,
    phases_of,
    public_state,
    same_lines,
)
from mercato_catalog.domain.stock import low_stock_transition


@pytest.mark.parametrize(
    "kwargs",
    [
        {"category": {"$gt": ""}},
        {"category": "$gt"},
        {"category": "Kitchen"},
        {"q": {"$regex": ".*"}},
        {"q": "x" * 101},
        {"q": "tab\there"},
        {"currency_code": "eur"},
        {"min_price_minor": 1},
        {"currency_code": "EUR", "min_price_minor": -1},
        {"currency_code": "EUR", "min_price_minor": "1"},
        {"currency_code": "EUR", "min_price_minor": 5, "max_price_minor": 4},
        {"skus": ("SKU-1", "SKU-1")},
        {"skus": ("sku-1",)},
        {"skus": ({"$gt": ""},)},
        {"skus": tuple(f"SKU-{i}" for i in range(101))},
    ],
)
def test_bad_filters_are_invalid_arguments(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidRequest):
        ProductFilter(**kwargs)  # type: ignore[arg-type]


def test_page_tokens_round_trip_and_are_bound_to_filters() -> None:
    fingerprint = ProductFilter(q="mug").fingerprint()
    token = encode_page_token("products", {"after": "SKU-9"}, fingerprint)
    assert decode_page_token(token, "products", {"after": str}, fingerprint) == {"after": "SKU-9"}
    assert decode_page_token("", "products", {"after": str}, fingerprint) is None
    with pytest.raises(InvalidPageToken):
        decode_page_token(token, "products", {"after": str}, ProductFilter().fingerprint())
    with pytest.raises(InvalidPageToken):
        decode_page_token(token, "categories", {"after": str}, fingerprint)


@pytest.mark.parametrize(
    "body",
    [
        {"k": "products", "p": {"after": {"$gt": ""}}, "f": ""},
        {"k": "products", "p": {"after": 1}, "f": ""},
        {"k": "products", "p": {"after": "A-1", "x": 1}, "f": ""},
        {"k": "products", "p": ["A-1"], "f": ""},
        ["products"],
    ],
)
def test_forged_page_tokens_are_refused(body: object) -> None:
    token = base64.urlsafe_b64encode(json.dumps(body).encode()).decode()
    with pytest.raises(InvalidPageToken):
        decode_page_token(token, "products", {"after": str}, "")


@pytest.mark.parametrize("token", ["%%%", "bm90IGpzb24", "e30"])
def test_garbage_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidPageToken):
        decode_page_token(token, "products", {"after": str}, "")


def test_page_size_default_and_cap() -> None:
    assert page_size(0) == 20
    assert page_size(0, default=100) == 100
    assert page_size(7) == 7
    assert page_size(1000) == 100
    with pytest.raises(InvalidRequest):
        page_size(-1)


def test_money_and_products_are_validated() -> None:
    with pytest.raises(InvalidRequest):
        Money("eur", 1)
    with pytest.raises(InvalidRequest):
        Money("EUR", -1)
    with pytest.raises(InvalidRequest):
        Money("EUR", 1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest):
        NewProduct("bad sku", "n", "", "", Money("EUR", 1), {})
    with pytest.raises(InvalidRequest):
        NewProduct("SKU-1", "n", "", "", Money("EUR", 1), {"$set": "x"})
    with pytest.raises(InvalidRequest):
        NewProduct("SKU-1", "n", "", "", Money("EUR", 1), {"a.b": "x"})
    with pytest.raises(InvalidRequest):
        ProductChanges(fields=frozenset({"stock_on_hand"}))
    with pytest.raises(InvalidRequest):
        ProductChanges(fields=frozenset({"price"}))
    ProductChanges(fields=frozenset({"name"}), name="ok")


def test_category_depth_is_limited() -> None:
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    parent = Category("d", "D", "c", ("a", "b", "c"), now)
    assert category_ancestors(parent) == ("a", "b", "c", "d")
    too_deep = Category("e", "E", "d", ("a", "b", "c", "d"), now)
    with pytest.raises(CategoryTooDeep):
        category_ancestors(too_deep)
    assert category_ancestors(None) == ()


def test_lines() -> None:
    a = [Line("A-1", 1), Line("B-1", 2)]
    assert same_lines(a, list(reversed(a)))
    assert not same_lines(a, [Line("A-1", 1), Line("B-1", 3)])
    with pytest.raises(InvalidRequest):
        check_lines([Line("A-1", 1), Line("A-1", 2)])
    with pytest.raises(InvalidRequest):
        check_lines([])
    with pytest.raises(InvalidRequest):
        Line("A-1", 0)
    with pytest.raises(InvalidRequest):
        Line("A-1", 1001)


def test_phases_map_to_public_states() -> None:
    assert public_state(Phase.RESERVING) is ReservationState.HELD
    assert public_state(Phase.COMMITTING) is ReservationState.COMMITTED
    assert public_state(Phase.EXPIRING) is ReservationState.EXPIRED
    assert public_state(Phase.FAILED) is None
    assert set(phases_of(ReservationState.RELEASED)) == {Phase.RELEASING, Phase.RELEASED}
    assert Phase.FAILED not in phases_of(None)
    assert [p for p in Phase if p.holds_are_live] == [Phase.RESERVING, Phase.HELD, Phase.COMMITTING]


def test_low_stock_fires_once_per_crossing() -> None:
    assert low_stock_transition(False, 4, 5) is True
    assert low_stock_transition(True, 3, 5) is None
    assert low_stock_transition(True, 5, 5) is False
    assert low_stock_transition(False, 9, 5) is None
    assert low_stock_transition(False, 0, 0) is None


def test_stock_unavailable_names_the_lines() -> None:
    error = StockUnavailable(
        [
            Shortage("A-1", ShortageKind.OUT_OF_STOCK, "x"),
            Shortage("B-1", ShortageKind.NOT_FOUND, "y"),
        ]
    )
    assert error.reason == "STOCK_UNAVAILABLE"
    assert error.error_domain == "catalog.mercato"
    assert error.metadata == {"skus": "A-1,B-1", "types": "OUT_OF_STOCK,NOT_FOUND"}
