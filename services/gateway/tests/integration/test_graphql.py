"""POST /graphql over the real auth and catalog (and the canned orders): the schema derived from
the protos answers queries and mutations with the RPCs' own access rules and errors."""

from __future__ import annotations

import asyncio
import hashlib
import re
import uuid
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from graphql import get_introspection_query

from mercato.orders.v1 import orders_pb2
from mercato_devstack.graphiql import graphiql_assets

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


ORDERS_PAGE = (
    "query Page($n: Int) { listOrders(pageSize: $n) "
    "{ orders { id lines { sku quantity } history { toState } } } }"
)


@pytest.mark.parametrize(
    ("payload", "reason", "limit", "actual"),
    [
        # 1,000 aliases of a field that costs nothing.
        (
            {"query": "{ " + " ".join(f"a{i}: __typename" for i in range(1000)) + " }"},
            "GRAPHQL_ALIAS_LIMIT", 30, 1000,
        ),
        # Eleven different root fields.
        (
            {"query": "{ getCurrentUser { user { id } } getFreshness { totalLag }"
             " listCategories { nextPageToken } listOrders { nextPageToken }"
             " listProducts { nextPageToken } listUsers { nextPageToken }"
             ' getOrder(id: "x") { order { id } } getProduct(sku: "x") { product { sku } }'
             ' getUser(id: "x") { user { id } } getFunnel { placed }'
             " getSalesSummary { total { ordersPlaced } } }"},
            "GRAPHQL_ROOT_FIELD_LIMIT", 10, 11,
        ),
        # A cost bomb: a page of 1,000 orders, each with its lists.
        (
            {"query": ORDERS_PAGE, "variables": {"n": 1000}},
            "GRAPHQL_COST_LIMIT", 5000, 1 + 1000 * (1 + 1 + 10 * 3 + 10 * 2),
        ),
        # A batch of 100 operations.
        (
            [{"query": '{ getOrder(id: "x") { order { id } } }'}] * 100,
            "GRAPHQL_BATCH_LIMIT", 10, 100,
        ),
    ],
    ids=["aliases", "root-fields", "cost", "batch"],
)  # fmt: skip
async def test_hostile_requests_are_refused_before_any_call(
    suite: Suite,
    client: httpx.AsyncClient,
    payload: Any,
    reason: str,
    limit: int,
    actual: int,
) -> None:
    calls = len(suite.orders.seen)
    response = await client.post("/graphql", json=payload, headers=bearer(suite.tokens.admin))
    assert response.status_code == 400, response.text
    error = response.json()["errors"][0]
    assert error["extensions"]["code"] == reason
    assert error["extensions"]["metadata"] == {"limit": str(limit), "actual": str(actual)}
    assert len(suite.orders.seen) == calls  # nothing reached a service


async def test_deep_nesting_is_refused_before_any_call(suite: Suite) -> None:
    calls = len(suite.orders.seen)
    app = await suite.gateway(graphql_max_depth=4)
    async with suite.client(app) as client:
        # The only recursion the schema has is introspection's (types -> fields -> type ->
        # fields ...): graphql-core's validation bounds it.
        recursive = await graphql(
            client,
            "{ __schema { types { fields { type { fields { type { fields { type { fields"
            " { type { fields { name } } } } } } } } } } } }",
            suite.tokens.admin,
        )
        assert recursive.status_code == 400, recursive.text
        [error] = recursive.json()["errors"]
        assert error["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED"
        assert error["message"] == "Maximum introspection depth exceeded"
        # A selection deeper than the limit (4 here; 10 by default).
        deep = await graphql(
            client,
            "{ listOrders { orders { lines { unitPrice { currencyCode } } } } }",
            suite.tokens.admin,
        )
        assert deep.status_code == 400, deep.text
        [error] = deep.json()["errors"]
        assert error["extensions"]["code"] == "GRAPHQL_DEPTH_LIMIT"
        assert error["extensions"]["metadata"] == {"limit": "4", "actual": "5"}
    assert len(suite.orders.seen) == calls


async def test_within_the_limits(suite: Suite, client: httpx.AsyncClient) -> None:
    page = await graphql(client, ORDERS_PAGE, suite.tokens.customer, {"n": 20})
    assert page.status_code == 200, page.text
    assert page.json()["data"]["listOrders"]["orders"][0]["id"] == ORDER_ID
    # A batch of two: both run, answers in order.
    batch = await client.post(
        "/graphql",
        json=[
            {"query": "query A($id: String!) { getOrder(id: $id) { order { id } } }",
             "variables": {"id": ORDER_ID}},
            {"query": "{ getCurrentUser { user { email } } }"},
        ],
        headers=bearer(suite.tokens.customer),
    )  # fmt: skip
    assert batch.status_code == 200, batch.text
    first, second = batch.json()
    assert first["data"]["getOrder"]["order"]["id"] == ORDER_ID
    assert second["data"]["getCurrentUser"]["user"]["email"]
    # The introspection query every GraphQL tool sends (GraphiQL, gql, schemathesis).
    introspection = await graphql(client, get_introspection_query(descriptions=True))
    assert introspection.status_code == 200, introspection.text
    assert introspection.json()["data"]["__schema"]["subscriptionType"]["name"] == ("Subscription")


async def test_automatic_persisted_queries(suite: Suite, client: httpx.AsyncClient) -> None:
    query = "query Me { getCurrentUser { user { id } } }"
    digest = hashlib.sha256(query.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    token = bearer(suite.tokens.customer)
    unknown = await client.post("/graphql", json={"extensions": extensions}, headers=token)
    assert unknown.status_code == 200
    assert unknown.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"
    registered = await client.post(
        "/graphql", json={"query": query, "extensions": extensions}, headers=token
    )
    assert registered.json()["data"]["getCurrentUser"]["user"]["id"]
    by_hash = await client.post("/graphql", json={"extensions": extensions}, headers=token)
    assert by_hash.json() == registered.json()
    forged = {"persistedQuery": {"version": 1, "sha256Hash": "0" * 64}}
    mismatch = await client.post(
        "/graphql", json={"query": query, "extensions": forged}, headers=token
    )
    assert mismatch.status_code == 400
    assert mismatch.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_HASH_MISMATCH"


async def test_introspection_can_be_switched_off(suite: Suite, client: httpx.AsyncClient) -> None:
    query = {"query": "{ __schema { queryType { name } } }"}
    allowed = await client.post("/graphql", json=query)
    assert allowed.json() == {"data": {"__schema": {"queryType": {"name": "Query"}}}}
    app = await suite.gateway(graphql_introspection=False)
    async with suite.client(app) as closed:
        refused = await closed.post("/graphql", json=query)
        assert refused.status_code == 400
        assert refused.json()["errors"][0]["extensions"]["code"] == (
            "GRAPHQL_INTROSPECTION_DISABLED"
        )
        # The API itself is unchanged.
        typename = await closed.post("/graphql", json={"query": "{ __typename }"})
        assert typename.json() == {"data": {"__typename": "Query"}}


async def test_public_writes_spend_the_strict_budget_too(suite: Suite) -> None:
    """login over GraphQL is limited as POST /v1/auth/login is: no way around the strict class."""
    app = await suite.gateway(rate_limit_strict={"rate": 0.001, "burst": 2})
    login = (
        'mutation { login(email: "nobody@mercato.test", password: "wrong password 1") '
        "{ access_token } }"
    )
    async with suite.client(app) as client:
        answers = [await client.post("/graphql", json={"query": login}) for _ in range(3)]
        assert [a.status_code for a in answers] == [200, 200, 429]
        assert answers[0].json()["errors"][0]["extensions"]["code"] == "INVALID_CREDENTIALS"
        assert answers[2].json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        # Reads are in the default class, untouched.
        read = await client.post("/graphql", json={"query": "{ __typename }"})
        assert read.status_code == 200


async def test_an_invalid_persisted_query_is_not_kept(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    query = "{ getCurrentUser { noSuchField } }"
    digest = hashlib.sha256(query.encode()).hexdigest()
    extensions = {"persistedQuery": {"version": 1, "sha256Hash": digest}}
    refused = await client.post("/graphql", json={"query": query, "extensions": extensions})
    assert refused.status_code == 400
    again = await client.post("/graphql", json={"extensions": extensions})
    assert again.json()["errors"][0]["extensions"]["code"] == "PERSISTED_QUERY_NOT_FOUND"


def catalog_calls(suite: Suite, method: str) -> float:
    """How many calls of ``method`` the catalog's gRPC server has handled."""
    value = suite.catalog_metrics.get_sample_value(
        "grpc_server_handled_total",
        {
            "grpc_service": "mercato.catalog.v1.CatalogService",
            "grpc_method": method,
            "grpc_code": "OK",
        },
    )
    return value or 0.0


ORDERS_WITH_PRODUCTS = """
query Orders {
  listOrders(pageSize: 20) {
    orders { id lines { sku quantity product { sku name price { amountMinor } } } }
  }
}
"""


async def test_order_lines_resolve_their_products_in_one_call(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    """20 orders x 5 lines (25 distinct products and one SKU the catalog does not have): the
    products come from one ListProducts call, however many lines there are."""
    tag = uuid.uuid4().hex[:6].upper()
    skus = [f"N1-{tag}-{index:02d}" for index in range(25)]
    for index, sku in enumerate(skus):
        product = {
            "sku": sku,
            "name": f"Thing {index}",
            "price": {"currencyCode": "EUR", "amountMinor": str(100 + index)},
        }
        made = await graphql(client, CREATE_PRODUCT, suite.tokens.admin, {"product": product})
        assert made.status_code == 200, made.text
        assert "errors" not in made.json(), made.text
    unknown = f"N1-{tag}-GONE"
    orders = [
        orders_pb2.Order(
            id=str(uuid.uuid4()),
            lines=[
                orders_pb2.OrderLine(sku=unknown if (order, line) == (19, 4) else sku, quantity=1)
                for line, sku in enumerate(skus[order % 5 * 5 : order % 5 * 5 + 5])
            ],
        )
        for order in range(20)
    ]
    suite.orders.listed = orders
    before = {method: catalog_calls(suite, method) for method in ("ListProducts", "GetProduct")}
    try:
        answer = await graphql(client, ORDERS_WITH_PRODUCTS, suite.tokens.customer)
    finally:
        suite.orders.listed = None
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert "errors" not in body, body
    listed = body["data"]["listOrders"]["orders"]
    assert len(listed) == 20
    assert all(len(order["lines"]) == 5 for order in listed)
    for order in listed:
        for line in order["lines"]:
            if line["sku"] == unknown:
                assert line["product"] is None
                continue
            index = skus.index(line["sku"])
            assert line["product"] == {
                "sku": line["sku"],
                "name": f"Thing {index}",
                "price": {"amountMinor": str(100 + index)},
            }
    # One batch call for the 100 lines; never a call per line.
    assert catalog_calls(suite, "ListProducts") - before["ListProducts"] == 1
    assert catalog_calls(suite, "GetProduct") - before["GetProduct"] == 0


async def test_a_reference_keeps_its_rpcs_access_rule(
    suite: Suite, client: httpx.AsyncClient
) -> None:
    """A token with orders:read but not catalog:read: each product is a PERMISSION_DENIED
    field error, the orders and their lines are still answered, and the catalog is not called."""
    claims = jwt.decode(suite.tokens.customer, options={"verify_signature": False})
    key = await suite.auth.keys.signing_key()
    orders_only = key.sign({**claims, "scope": "orders:read", "jti": uuid.uuid4().hex})
    suite.orders.listed = [
        orders_pb2.Order(id=ORDER_ID, lines=[orders_pb2.OrderLine(sku="SKU-1", quantity=1)])
    ]
    before = catalog_calls(suite, "ListProducts")
    try:
        answer = await graphql(
            client, "{ listOrders { orders { id lines { sku product { sku } } } } }", orders_only
        )
    finally:
        suite.orders.listed = None
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["data"]["listOrders"]["orders"] == [
        {"id": ORDER_ID, "lines": [{"sku": "SKU-1", "product": None}]}
    ]
    [error] = body["errors"]
    assert error["extensions"]["code"] == "SCOPE_MISSING", error
    assert error["extensions"]["metadata"] == {"missing_scopes": "catalog:read"}
    assert error["path"] == ["listOrders", "orders", 0, "lines", 0, "product"]
    assert catalog_calls(suite, "ListProducts") == before


async def test_root_fields_are_counted_and_timed(suite: Suite) -> None:
    """RED per root field: requests by field, operation type and status code, and duration."""
    app = await suite.gateway()
    async with suite.client(app) as client:
        found = await graphql(
            client,
            "query Two($id: String!) { getOrder(id: $id) { order { id } }"
            ' missing: getOrder(id: "00000000-0000-4000-8000-000000000000") { order { id } } }',
            suite.tokens.customer,
            {"id": ORDER_ID},
        )
    assert found.status_code == 200, found.text
    assert found.json()["errors"][0]["extensions"]["code"] == "ORDER_NOT_FOUND"

    def requests(code: str) -> float | None:
        labels = {"field": "getOrder", "operation_type": "query", "code": code}
        return app.registry.get_sample_value("gateway_graphql_field_requests_total", labels)

    assert requests("OK") == 1
    assert requests("NOT_FOUND") == 1
    timed = app.registry.get_sample_value(
        "gateway_graphql_field_duration_seconds_count",
        {"field": "getOrder", "operation_type": "query"},
    )
    assert timed == 2


REPO_ROOT = Path(__file__).resolve().parents[4]
GRAPHIQL_MODULES = REPO_ROOT / "services" / "gateway" / "graphiql" / "node_modules"


async def test_graphiql_page_in_development(suite: Suite) -> None:
    """With GRAPHIQL_ASSETS_DIR (the pinned npm packages, installed as make run does), the page
    and its assets come from the gateway under a strict Content-Security-Policy; without it,
    /graphiql is an unknown route."""
    assets = await asyncio.to_thread(graphiql_assets, REPO_ROOT)
    assert assets == GRAPHIQL_MODULES
    app = await suite.gateway(graphiql_assets_dir=assets)
    async with suite.client(app) as client:
        page = await client.get("/graphiql")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        csp = page.headers["content-security-policy"]
        assert "script-src 'self';" in csp
        assert "connect-src 'self';" in csp
        sources = re.findall(r'(?:src|href)="(/graphiql/[^"]+)"', page.text)
        assert len(sources) == 6
        for source in sources:
            asset = await client.get(source)
            assert asset.status_code == 200, source
            assert asset.content, source
        react = await client.get("/graphiql/react.production.min.js")
        assert react.content == (assets / "react/umd/react.production.min.js").read_bytes()
        start = await client.get("/graphiql/start.js")
        assert "GraphiQL.createFetcher" in start.text
        assert "graphqlWs.createClient" in start.text
    without = await suite.gateway()
    async with suite.client(without) as client:
        assert (await client.get("/graphiql")).status_code == 404
