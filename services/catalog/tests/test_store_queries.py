"""The store's query documents: built from typed values only, never from caller documents."""

from __future__ import annotations

import re

import pytest

from mercato_catalog.domain.errors import InvalidRequest
from mercato_catalog.domain.listing import ProductFilter
from mercato_catalog.domain.products import ProductState
from mercato_catalog.store.common import hold_key
from mercato_catalog.store.products import product_query


def _walk(value: object) -> list[object]:
    """Every key and scalar of a query document."""
    if isinstance(value, dict):
        out: list[object] = []
        for key, inner in value.items():
            out.append(key)
            out.extend(_walk(inner))
        return out
    if isinstance(value, list):
        return [x for item in value for x in _walk(item)]
    return [value]


def test_query_of_default_filter_lists_active_products() -> None:
    assert product_query(ProductFilter(), None) == {"state": "ACTIVE"}


def test_query_combines_filters_with_typed_values() -> None:
    flt = ProductFilter(
        state=ProductState.ARCHIVED,
        category="kitchen",
        q="Chef (8 in.)",
        currency_code="EUR",
        min_price_minor=100,
        max_price_minor=900,
    )
    query = product_query(flt, "SKU-1")
    assert query == {
        "state": "ARCHIVED",
        "category_path": "kitchen",
        "name": {"$regex": re.escape("Chef (8 in.)"), "$options": "i"},
        "price_currency": "EUR",
        "price_minor": {"$gte": 100, "$lte": 900},
        "_id": {"$gt": "SKU-1"},
    }


def test_query_of_named_skus_pages_within_them() -> None:
    flt = ProductFilter(skus=("SKU-2", "SKU-1"))
    assert product_query(flt, "SKU-1") == {
        "state": "ACTIVE",
        "_id": {"$in": ["SKU-2", "SKU-1"], "$gt": "SKU-1"},
    }
    assert flt.fingerprint() == ProductFilter(skus=("SKU-1", "SKU-2")).fingerprint()
    assert flt.fingerprint() != ProductFilter(skus=("SKU-1",)).fingerprint()


@pytest.mark.parametrize("text", ['{"$gt": ""}', "$where", ".*", "a|b", "(?i)x", "\\", "[^]"])
def test_search_text_is_a_literal_pattern(text: str) -> None:
    pattern = product_query(ProductFilter(q=text), None)["name"]["$regex"]
    assert re.fullmatch(pattern, text)
    assert re.search(pattern, "something else entirely") is None
    # The only operators in the query are the ones the code wrote.
    operators = {
        x for x in _walk(product_query(ProductFilter(q=text), None)) if str(x).startswith("$")
    }
    assert operators <= {"$regex", "$options"}


def test_cursor_value_must_be_a_sku() -> None:
    with pytest.raises(InvalidRequest):
        product_query(ProductFilter(), {"$gt": ""})  # type: ignore[arg-type]


def test_hold_keys_are_safe_document_keys() -> None:
    key = hold_key("3f2c1b7e-0000-4000-8000-000000000001")
    assert key == "o_3f2c1b7e000040008000000000000001"
    assert "." not in key
    assert not key.startswith("$")
