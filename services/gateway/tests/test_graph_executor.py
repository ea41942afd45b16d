"""The plain-selection executor answers exactly as graphql-core's own, data and errors."""

from __future__ import annotations

from typing import Any

import pytest
from graphql import ExecutionResult, build_schema, execute, parse, validate
from graphql.execution.incremental import IncrementalExecutor

from mercato_gateway.graph_executor import Leaf, PlainFieldExecutor, Selection, plain_plan

SCHEMA = build_schema(
    """
    enum State { ACTIVE ARCHIVED }
    type Price { currency: String amount: Int }
    type Product {
      sku: String
      state: State
      tags: [String!]
      maybeTags: [String]
      price: Price
      prices: [Price!]
      count: Int
      required: String!
      related(first: Int): [Product!]
    }
    type Query { product: Product products: [Product!] }
    """
)

PRODUCT = {
    "sku": "OAK-1",
    "state": "ACTIVE",
    "tags": ["kitchen", "oak"],
    "maybeTags": ["a", None],
    "price": {"currency": "EUR", "amount": 4500},
    "prices": [{"currency": "EUR", "amount": 1}, {"currency": "USD", "amount": 2}],
    "count": 3,
    "required": "yes",
    "related": [{"sku": "OAK-2", "required": "r"}],
}


def _run(query: str, root: Any, executor: type[IncrementalExecutor] | None) -> ExecutionResult:
    document = parse(query)
    assert not validate(SCHEMA, document)
    result = execute(
        SCHEMA,
        document,
        root_value=root,
        variable_values={"on": True, "off": False},
        executor_class=executor,
    )
    assert isinstance(result, ExecutionResult)
    return result


CASES = [
    ("{ product { sku state tags price { currency amount } count } }", {"product": PRODUCT}),
    ("{ products { sku prices { amount } } }", {"products": [PRODUCT, PRODUCT]}),
    ("{ product { a: sku b: sku price { c: amount } } }", {"product": PRODUCT}),
    ("{ product { sku price { currency } price { amount } } }", {"product": PRODUCT}),
    (
        "{ product { ... on Product { sku } ...F } } fragment F on Product { count }",
        {"product": PRODUCT},
    ),
    (
        "query($on: Boolean!, $off: Boolean!) { product { sku @include(if: $on)"
        " count @skip(if: $on) state @include(if: $off) } }",
        {"product": PRODUCT},
    ),
    ("{ product { __typename sku } }", {"product": PRODUCT}),
    ("{ product { required maybeTags related(first: 1) { sku } } }", {"product": PRODUCT}),
    ("{ product { sku price { amount } } }", {"product": {"sku": None, "price": None}}),
    ("{ product { sku } }", {"product": None}),
    # what graphql-core reports as errors, with the same messages, paths and nulls
    ("{ product { state } }", {"product": {"state": "SOLD"}}),
    ("{ product { count } }", {"product": {"count": "three"}}),
    ("{ product { tags } }", {"product": {"tags": ["a", None]}}),
    ("{ product { tags } }", {"product": {"tags": "a"}}),
    ("{ product { price { amount } } }", {"product": {"price": "cheap"}}),
    ("{ product { prices { amount } } }", {"product": {"prices": [None]}}),
    ("{ products { required } }", {"products": [{"required": None}]}),
    ("{ product { sku } }", {"product": {"sku": lambda _info: "called"}}),
]


@pytest.mark.parametrize(("query", "root"), CASES)
def test_answers_as_graphql_core(query: str, root: Any) -> None:
    expected = _run(query, root, None)
    actual = _run(query, root, PlainFieldExecutor)
    assert actual.data == expected.data
    assert [error.formatted for error in actual.errors or ()] == [
        error.formatted for error in expected.errors or ()
    ]


def test_a_plain_selection_skips_the_general_way(monkeypatch: pytest.MonkeyPatch) -> None:
    general: list[str] = []
    original = IncrementalExecutor.execute_field

    def counted(self: Any, parent_type: Any, source: Any, details: Any, *rest: Any) -> Any:
        general.append(f"{parent_type.name}.{details[0].node.name.value}")
        return original(self, parent_type, source, details, *rest)

    monkeypatch.setattr(IncrementalExecutor, "execute_field", counted)
    query = "{ products { sku tags price { currency amount } related(first: 2) { sku } } }"
    result = _run(query, {"products": [PRODUCT]}, PlainFieldExecutor)
    assert result.errors is None
    assert result.data == {
        "products": [
            {
                "sku": "OAK-1",
                "tags": ["kitchen", "oak"],
                "price": {"currency": "EUR", "amount": 4500},
                "related": [{"sku": "OAK-2"}],
            }
        ]
    }
    # The list's items hold a field with arguments, so the list goes the general way, each
    # of its items' plain fields in one step; the field with arguments goes the general way.
    assert general == ["Query.products", "Product.related"]


def test_plans() -> None:
    product = SCHEMA.type_map["Product"]
    query = SCHEMA.type_map["Query"]

    def plan(selection: str, parent: Any = product) -> Any:
        document = parse("{ " + selection + " }")
        return plain_plan(parent, document.definitions[0].selection_set.selections[0])  # type: ignore[attr-defined]

    assert plan("sku") == Leaf(SCHEMA.type_map["String"], False)  # type: ignore[arg-type]
    assert plan("tags") == Leaf(SCHEMA.type_map["String"], True)  # type: ignore[arg-type]
    price = plan("price { n: amount }")
    assert isinstance(price, Selection)
    assert [(response, name) for response, name, _ in price.fields] == [("n", "amount")]
    assert plan("products { sku price { amount } }", query).is_list
    for not_plain in (
        "required",  # non-null: a missing value is an error of the parent
        "maybeTags",  # null items allowed: left to graphql-core
        "related { sku }",  # takes arguments
        "price { ... on Price { amount } }",  # a fragment
        "price { amount @skip(if: true) }",  # a directive
        "price { amount amount }",  # selected twice
        "price { __typename }",  # a meta field
    ):
        assert plan(not_plain) is None, not_plain
