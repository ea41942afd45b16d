"""Entity tags and If-None-Match (RFC 9110 sections 8.8.3 and 13.1.2), without a network."""

from __future__ import annotations

import re

import pytest

from mercato.catalog.v1 import catalog_pb2
from mercato.type.v1 import money_pb2
from mercato_gateway.conditional import entity_tag, none_match


def _product(**changes: object) -> catalog_pb2.GetProductResponse:
    product = catalog_pb2.Product(
        sku="SKU-1",
        name="Knife",
        price=money_pb2.Money(currency_code="EUR", amount_minor=1999),
        attributes={"colour": "red", "size": "l"},
        stock_on_hand=5,
        etag='W/"1"',
    )
    for name, value in changes.items():
        setattr(product, name, value)
    return catalog_pb2.GetProductResponse(product=product)


def test_entity_tag_is_weak_stable_and_changes_with_the_resource() -> None:
    tag = entity_tag(_product())
    assert re.fullmatch(r'W/"[A-Za-z0-9_-]{22}"', tag)
    assert entity_tag(_product()) == tag
    # Map members inserted in another order: the same resource, the same tag.
    other_order = _product()
    other_order.product.attributes.clear()
    other_order.product.attributes["size"] = "l"
    other_order.product.attributes["colour"] = "red"
    assert entity_tag(other_order) == tag
    # A stock movement leaves the product's field etag alone but changes the representation.
    assert entity_tag(_product(stock_on_hand=4)) != tag
    assert entity_tag(_product(name="Chef knife")) != tag


@pytest.mark.parametrize(
    ("header", "matches"),
    [
        (None, False),
        ("", False),
        ("*", True),
        (" * ", True),
        ('W/"abc"', True),
        ('"abc"', True),  # weak comparison: W/ does not matter
        ('"other", W/"abc"', True),
        ('"other",W/"abc"', True),
        ('"a,b", "abc"', True),  # a comma inside an opaque tag is not a separator
        ('"a,b"', False),
        ('"other"', False),
        ('W/"ABC"', False),  # opaque tags compare exactly
        ("abc", False),  # not an entity tag
        ('abc, "abc"', True),  # a malformed member is skipped
        ('w/"abc"', False),  # W/ is case-sensitive
        ('"abc', False),
        ('*, "other"', False),  # * is only valid alone: here a skipped member
        ('*, "abc"', True),
    ],
)
def test_if_none_match(header: str | None, matches: bool) -> None:
    assert none_match(header, 'W/"abc"') is matches
