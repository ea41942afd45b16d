"""POST /graphql over the real auth and catalog (and the canned orders): the schema derived from
the protos answers queries and mutations with the RPCs' own access rules and errors."""

from __future__ import annotations

import uuid
from typing import Any

import httpx
import pytest

from .conftest import ORDER_ID, Suite

pytestmark = pytest.mark.integration


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


async def graphql(
    client: httpx.AsyncClient,
    query: str,
    token: str | None = None,
    variables: dict[str, Any] | None = None,
) -> httpx.Response:
    return await client.post(
        "/graphql",
        json={"query": query, "variables": variables or {}},
        headers=bearer(token) if token else {},
    )


CREATE_PRODUCT = """
mutation Create($product: ProductInput!) {
  createProduct(product: $product) {
    product { sku name price { currencyCode amountMinor } state createTime attributes }
  }
}
"""


async def test_queries_and_mutations_reach_the_services(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    admin = suite.tokens.admin
    slug = f"gql-{uuid.uuid4().hex[:6]}"
    sku = f"GQL-{uuid.uuid4().hex[:8].upper()}"
    category = await graphql(
        client,
        "mutation Make($id: String!) { createCategory(category: {id: $id, "
        'displayName: "Kitchen"}) { category { id displayName } } }',
        admin,
        {"id": slug},
    )
    assert category.status_code == 200, category.text
    assert category.json() == {
        "data": {"createCategory": {"category": {"id": slug, "displayName": "Kitchen"}}}
    }

    product = {
        "sku": sku,
        "name": "Knife",
        "categoryId": slug,
        "price": {"currencyCode": "EUR", "amountMinor": "1999"},
        "attributes": {"colour": "red"},
    }
    created = await graphql(client, CREATE_PRODUCT, admin, {"product": product})
    assert created.status_code == 200, created.text
    made = created.json()["data"]["createProduct"]["product"]
    assert made["price"] == {"currencyCode": "EUR", "amountMinor": "1999"}  # Int64 as a string
    assert made["state"] == "PRODUCT_STATE_ACTIVE"
    assert made["attributes"] == {"colour": "red"}
    assert made["createTime"].endswith("Z")

    # Two root fields in one query; the catalog read by a customer (catalog:read).
    read = await graphql(
        client,
        "query Read($sku: String!, $slug: String!) {"
        " getProduct(sku: $sku) { product { sku stockAvailable } }"
        " listProducts(category: $slug, pageSize: 5) { products { sku } nextPageToken } }",
        suite.tokens.customer,
        {"sku": sku, "slug": slug},
    )
    assert read.status_code == 200, read.text
    data = read.json()["data"]
    assert data["getProduct"]["product"] == {"sku": sku, "stockAvailable": 0}
    assert data["listProducts"] == {"products": [{"sku": sku}], "nextPageToken": ""}


async def test_errors_carry_the_rest_error_members(suite: Suite, client: httpx.AsyncClient) -> None:
    # A service's validation: the violated field by its JSON path, the reason as the code.
    bad = {"sku": "GQL-BAD", "name": "x", "price": {"currencyCode": "euro", "amountMinor": "1"}}
    refused = await graphql(client, CREATE_PRODUCT, suite.tokens.admin, {"product": bad})
    assert refused.status_code == 200
    body = refused.json()
    assert body["data"] == {"createProduct": None}
    error = body["errors"][0]
    assert error["path"] == ["createProduct"]
    assert error["extensions"]["status"] == "INVALID_ARGUMENT"
    fields = [v["field"] for v in error["extensions"]["fieldViolations"]]
    assert "product.price.currencyCode" in fields, error

    # The RPC's access rule per root field: no token, then a token without the scope; the
    # field that may run still runs.
    anonymous = await graphql(client, '{ getProduct(sku: "X") { product { sku } } }')
    assert anonymous.status_code == 200
    assert anonymous.json()["errors"][0]["extensions"]["code"] == "TOKEN_MISSING"
    mixed = await graphql(
        client,
        "query Both($id: String!) { getOrder(id: $id) { order { id total { amountMinor } } }"
        " listUsers { users { id } } }",
        suite.tokens.customer,
        {"id": ORDER_ID},
    )
    assert mixed.status_code == 200
    result = mixed.json()
    assert result["data"]["getOrder"]["order"] == {"id": ORDER_ID, "total": {"amountMinor": "3998"}}
    assert result["data"]["listUsers"] is None
    denied = result["errors"][0]
    assert denied["path"] == ["listUsers"]
    assert denied["extensions"]["code"] == "SCOPE_MISSING"
    assert denied["extensions"]["metadata"] == {"missing_scopes": "users:admin"}

    # A service's NOT_FOUND.
    missing = await graphql(
        client,
        "query One($id: String!) { getOrder(id: $id) { order { id } } }",
        suite.tokens.customer,
        {"id": str(uuid.uuid4())},
    )
    assert missing.json()["errors"][0]["extensions"]["code"] == "ORDER_NOT_FOUND"


async def test_the_callers_token_and_arguments_reach_the_service(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    key = str(uuid.uuid4())
    placed = await graphql(
        client,
        "mutation Place($key: String!) { createOrder(idempotencyKey: $key, order: {lines: "
        '[{sku: "SKU-1", quantity: 2}]}) { order { id state lines { sku quantity } } } }',
        suite.tokens.customer,
        {"key": key},
    )
    assert placed.status_code == 200, placed.text
    order = placed.json()["data"]["createOrder"]["order"]
    assert order["state"] == "ORDER_STATE_CONFIRMED"
    assert order["lines"] == [{"sku": "SKU-1", "quantity": 2}]
    name, request, metadata = suite.orders.seen[-1]
    assert name == "CreateOrder"
    assert request.idempotency_key == key
    assert [(line.sku, line.quantity) for line in request.order.lines] == [("SKU-1", 2)]
    assert metadata["authorization"] == f"Bearer {suite.tokens.customer}"


@pytest.mark.parametrize(
    ("request_kwargs", "status", "code"),
    [
        ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, None),
        ({"json": {"query": "{ getProduct(sku: "}}, 400, "GRAPHQL_PARSE_FAILED"),
        ({"json": {"query": "{ noSuchField }"}}, 400, "GRAPHQL_VALIDATION_FAILED"),
        (
            {
                "json": {
                    "query": "query Q($n: Int!) { listUsers(pageSize: $n) { nextPageToken } }",
                    "variables": {"n": "many"},
                }
            },
            400,
            "BAD_USER_INPUT",
        ),
        ({"content": b"query=x", "headers": {"content-type": "text/plain"}}, 415, None),
        (
            {
                "json": {"query": "{ listUsers { nextPageToken } }"},
                "headers": {"authorization": "Bearer not-a-token"},
            },
            401,
            None,
        ),
    ],
    ids=["not-json", "syntax", "unknown-field", "bad-variable", "media-type", "bad-token"],
)
async def test_requests_that_are_not_graphql_are_refused(
    client: httpx.AsyncClient, request_kwargs: dict[str, Any], status: int, code: str | None
) -> None:
    response = await client.post("/graphql", **request_kwargs)
    assert response.status_code == status, response.text
    errors = response.json()["errors"]
    assert errors
    if code is not None:
        assert errors[0]["extensions"]["code"] == code


async def test_only_post(client: httpx.AsyncClient) -> None:
    response = await client.get("/graphql")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
