"""The customer journey over GraphQL with a real GraphQL client (gql): HTTP for queries and
mutations, a WebSocket (graphql-transport-ws) for the order's live status."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import httpx
import pytest
import websockets
from conftest import ADMIN_EMAIL, ADMIN_PASSWORD, Api
from gql import Client, GraphQLRequest, gql
from gql.transport.exceptions import TransportQueryError
from gql.transport.httpx import HTTPXAsyncTransport
from gql.transport.websockets import WebsocketsTransport

pytestmark = pytest.mark.e2e

LIVE_TIMEOUT = 30.0

REGISTER = gql(
    """
    mutation Register($email: String!, $password: String!) {
      registerUser(email: $email, displayName: "GraphQL customer", password: $password) {
        user { id email }
      }
    }
    """
)
LOGIN = gql(
    """
    mutation Login($email: String!, $password: String!) {
      login(email: $email, password: $password) { access_token }
    }
    """
)
BROWSE = gql(
    """
    query Browse($sku: String!) {
      listProducts(pageSize: 5) { products { sku name } }
      getProduct(sku: $sku) { product { sku stockAvailable price { currencyCode amountMinor } } }
    }
    """
)
ORDER = gql(
    """
    mutation Order($sku: String!, $key: String!) {
      createOrder(order: {lines: [{sku: $sku, quantity: 2}]}, idempotencyKey: $key) {
        order { id state total { currencyCode amountMinor } lines { sku product { name } } }
      }
    }
    """
)
PAY = gql(
    """
    mutation Pay($id: String!, $amount: MoneyInput!) {
      payOrder(id: $id, paymentToken: "tok_test_ok", amount: $amount) { order { state } }
    }
    """
)
FULFIL = gql(
    """
    mutation Fulfil($id: String!) { fulfillOrder(id: $id) { order { state } } }
    """
)
WATCH_QUERY = """
    subscription Watch($id: String!) {
      orderUpdated(id: $id) { order { id state history { fromState toState } } }
    }
"""
WATCH = gql(WATCH_QUERY)


def with_variables(request: GraphQLRequest, variables: dict[str, Any]) -> GraphQLRequest:
    return GraphQLRequest(request, variable_values=variables)


def http_client(url: str, token: str | None = None) -> Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return Client(transport=HTTPXAsyncTransport(url=f"{url}/graphql", headers=headers))


def ws_client(url: str, token: str) -> Client:
    transport = WebsocketsTransport(
        url=url.replace("http", "ws", 1) + "/graphql",
        init_payload={"Authorization": f"Bearer {token}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL],
    )
    return Client(transport=transport)


async def login(url: str, email: str, password: str) -> str:
    async with http_client(url) as session:
        result = await session.execute(
            with_variables(LOGIN, {"email": email, "password": password})
        )
    token: str = result["login"]["access_token"]
    return token


async def register(url: str) -> str:
    """A new customer, registered and logged in over GraphQL: its access token."""
    email, password = f"gql-{uuid.uuid4().hex[:12]}@example.com", "a long graphql password"
    async with http_client(url) as session:
        registered = await session.execute(
            with_variables(REGISTER, {"email": email, "password": password})
        )
    assert registered["registerUser"]["user"]["email"] == email
    return await login(url, email, password)


async def test_register_browse_order_pay_and_watch_it_live(http: httpx.Client, admin: Api) -> None:
    url = str(http.base_url).rstrip("/")
    sku = admin.create_product(stock=5, price_minor=1500)
    token = await register(url)

    async with http_client(url, token) as session:
        browsed = await session.execute(with_variables(BROWSE, {"sku": sku}))
        assert browsed["listProducts"]["products"], "the catalog lists products"
        assert browsed["getProduct"]["product"] == {
            "sku": sku,
            "stockAvailable": 5,
            "price": {"currencyCode": "EUR", "amountMinor": "1500"},
        }
        ordered = await session.execute(
            with_variables(ORDER, {"sku": sku, "key": str(uuid.uuid4())})
        )
    order = ordered["createOrder"]["order"]
    assert order["state"] == "ORDER_STATE_CONFIRMED"
    assert order["total"] == {"currencyCode": "EUR", "amountMinor": "3000"}
    assert order["lines"] == [{"sku": sku, "product": {"name": f"E2E product {sku}"}}]

    # Watch the order; pay it, have it fulfilled, and see each state arrive.
    seen: list[dict[str, Any]] = []
    subscribed = asyncio.Event()

    async def watch() -> None:
        async with ws_client(url, token) as live:
            async for update in live.subscribe(with_variables(WATCH, {"id": order["id"]})):
                seen.append(update["orderUpdated"]["order"])
                subscribed.set()
                if seen[-1]["state"] == "ORDER_STATE_FULFILLED":
                    return

    watcher = asyncio.create_task(watch())
    try:
        await asyncio.wait_for(subscribed.wait(), LIVE_TIMEOUT)
        async with http_client(url, token) as session:
            paid = await session.execute(
                with_variables(PAY, {"id": order["id"], "amount": order["total"]})
            )
        assert paid["payOrder"]["order"]["state"] == "ORDER_STATE_PAID"
        admin_token = await login(url, ADMIN_EMAIL, ADMIN_PASSWORD)
        async with http_client(url, admin_token) as session:
            done = await session.execute(with_variables(FULFIL, {"id": order["id"]}))
        assert done["fulfillOrder"]["order"]["state"] == "ORDER_STATE_FULFILLED"
        await asyncio.wait_for(watcher, LIVE_TIMEOUT)
    finally:
        watcher.cancel()
    states = [update["state"] for update in seen]
    assert states == ["ORDER_STATE_CONFIRMED", "ORDER_STATE_PAID", "ORDER_STATE_FULFILLED"]
    # The first message carries the order's way so far: placed PENDING, then CONFIRMED.
    assert [change["toState"] for change in seen[0]["history"]][:2] == [
        "ORDER_STATE_PENDING",
        "ORDER_STATE_CONFIRMED",
    ]

    # Another customer cannot watch it: GetOrder's ownership rule holds for subscriptions.
    stranger = await register(url)
    async with ws_client(url, stranger) as live:
        with pytest.raises(TransportQueryError) as caught:
            async for _ in live.subscribe(with_variables(WATCH, {"id": order["id"]})):
                pass
    assert caught.value.errors is not None
    assert caught.value.errors[0]["extensions"]["code"] == "ORDER_NOT_FOUND"


async def test_a_revoked_token_closes_its_live_connection(
    http: httpx.Client, anonymous: Api, admin: Api
) -> None:
    customer = anonymous.register()
    sku = admin.create_product(stock=5)
    order = customer.ok(customer.create_order([(sku, 1)]))["order"]
    url = str(http.base_url).rstrip("/").replace("http", "ws", 1) + "/graphql"
    async with websockets.connect(url, subprotocols=["graphql-transport-ws"]) as socket:
        init = {"type": "connection_init", "payload": {"Authorization": f"Bearer {customer.token}"}}
        await socket.send(json.dumps(init))
        assert json.loads(await socket.recv())["type"] == "connection_ack"
        watch = {"query": WATCH_QUERY, "variables": {"id": order["id"]}}
        await socket.send(json.dumps({"id": "1", "type": "subscribe", "payload": watch}))
        # Logout: the access token revoked; the gateway checks open connections' tokens again
        # every GRAPHQL_WS_TOKEN_CHECK_SECONDS (5) and closes this one.
        revoke = {"token": customer.token, "token_type_hint": "access_token"}
        assert anonymous.post("/oauth2/revoke", data=revoke).status_code == 200
        async with asyncio.timeout(LIVE_TIMEOUT):
            await socket.wait_closed()
        assert (socket.close_code, socket.close_reason) == (4403, "token revoked")
