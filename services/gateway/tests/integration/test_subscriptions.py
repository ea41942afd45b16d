"""GraphQL subscriptions over WebSocket (graphql-transport-ws) on a real uvicorn server, fed by
events on the suite's real Kafka topic: the order as GetOrder answers it now and at each of its
events, with the subscriber's token; the protocol's refusals and the connection limits."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from mercato.orders.v1 import orders_pb2

from .conftest import ORDER_ID, Suite

pytestmark = pytest.mark.integration

PROTOCOL = "graphql-transport-ws"
WATCH = "subscription Watch($id: String!) { orderUpdated(id: $id) { order { id state } } }"


def ws_url(url: str) -> str:
    return url.replace("http://", "ws://") + "/graphql"


async def receive(socket: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:  # noqa: ASYNC109
    message: dict[str, Any] = json.loads(await asyncio.wait_for(socket.recv(), timeout))
    return message


async def closed_with(socket: ClientConnection, timeout: float = 10.0) -> tuple[int, str]:  # noqa: ASYNC109
    async def drain() -> None:
        for _ in range(10):  # a few messages may come before the close
            await socket.recv()

    with pytest.raises(ConnectionClosed) as caught:
        await asyncio.wait_for(drain(), timeout)
    assert caught.value.rcvd is not None
    return caught.value.rcvd.code, caught.value.rcvd.reason


@asynccontextmanager
async def connected(url: str, token: str | None) -> AsyncIterator[ClientConnection]:
    """A connection past connection_init / connection_ack."""
    async with connect(ws_url(url), subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
        payload = {"Authorization": f"Bearer {token}"} if token else {}
        await socket.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert await receive(socket) == {"type": "connection_ack"}
        yield socket


async def subscribe(socket: ClientConnection, operation_id: str, order_id: str) -> None:
    message = {
        "type": "subscribe",
        "id": operation_id,
        "payload": {"query": WATCH, "variables": {"id": order_id}},
    }
    await socket.send(json.dumps(message))


async def order_event(suite: Suite, order_id: str) -> None:
    """An event of the order on the orders topic (the gateway reads its key only)."""
    producer = AIOKafkaProducer(bootstrap_servers=suite.backends.kafka_bootstrap)
    await producer.start()
    try:
        topic = f"{suite.topic_prefix}mercato.orders.events.v1"
        await producer.send_and_wait(topic, b"an event", key=order_id.encode())
    finally:
        await producer.stop()


async def test_the_owner_sees_each_change_of_the_order(suite: Suite) -> None:
    suite.orders.state = orders_pb2.ORDER_STATE_CONFIRMED
    # No periodic re-read within the test: every message after the first comes from an event.
    async with suite.serve_app(graphql_live_refresh_seconds=600) as (url, app):
        assert app.live is not None
        assert await app.live.wait_reading(30), "the gateway never read the orders topic"
        calls_before = sum(1 for name, *_ in suite.orders.seen if name == "GetOrder")
        async with connected(url, suite.tokens.customer) as socket:
            await subscribe(socket, "1", ORDER_ID)
            first = await receive(socket)
            assert first == {
                "type": "next",
                "id": "1",
                "payload": {
                    "data": {
                        "orderUpdated": {
                            "order": {"id": ORDER_ID, "state": "ORDER_STATE_CONFIRMED"}
                        }
                    }
                },
            }
            for state in (orders_pb2.ORDER_STATE_PAID, orders_pb2.ORDER_STATE_FULFILLED):
                suite.orders.state = state
                await order_event(suite, ORDER_ID)
                update = await receive(socket)
                order = update["payload"]["data"]["orderUpdated"]["order"]
                assert order["state"] == orders_pb2.OrderState.Name(state)
            # An event of another order wakes nobody; one without a change sends nothing.
            await order_event(suite, str(uuid.uuid4()))
            await order_event(suite, ORDER_ID)
            with pytest.raises(TimeoutError):
                await receive(socket, timeout=1.5)
            await socket.send(json.dumps({"type": "complete", "id": "1"}))
            await socket.send(json.dumps({"type": "ping"}))
            assert await receive(socket) == {"type": "pong"}
        # Each read went to orders with the subscriber's token.
        reads = [seen for seen in suite.orders.seen if seen[0] == "GetOrder"][calls_before:]
        assert len(reads) == 4  # the first read, two changes, the unchanged event
        assert all(
            metadata["authorization"] == f"Bearer {suite.tokens.customer}"
            for _, _, metadata in reads
        )
    suite.orders.state = orders_pb2.ORDER_STATE_CONFIRMED


async def test_what_getorder_refuses_is_the_subscriptions_error(suite: Suite) -> None:
    async with suite.serve(graphql_live_refresh_seconds=600) as url:
        async with connected(url, suite.tokens.customer) as socket:
            await subscribe(socket, "gone", str(uuid.uuid4()))
            refused = await receive(socket)
            assert refused["type"] == "error"
            assert refused["id"] == "gone"
            [error] = refused["payload"]
            assert error["extensions"]["code"] == "ORDER_NOT_FOUND"
            assert error["path"] == ["orderUpdated"]
        async with connected(url, None) as socket:  # no token: the RPC's access rule
            await subscribe(socket, "anonymous", ORDER_ID)
            refused = await receive(socket)
            assert refused["type"] == "error"
            assert refused["payload"][0]["extensions"]["code"] == "TOKEN_MISSING"


async def test_queries_over_the_socket_and_document_limits(suite: Suite) -> None:
    async with (
        suite.serve(graphql_max_depth=3) as url,
        connected(url, suite.tokens.customer) as socket,
    ):
        await socket.send(
            json.dumps(
                {
                    "type": "subscribe",
                    "id": "q",
                    "payload": {
                        "query": "query One($id: String!) { getOrder(id: $id) { order { id } } }",
                        "variables": {"id": ORDER_ID},
                    },
                }
            )
        )
        assert await receive(socket) == {
            "type": "next",
            "id": "q",
            "payload": {"data": {"getOrder": {"order": {"id": ORDER_ID}}}},
        }
        assert await receive(socket) == {"type": "complete", "id": "q"}
        deep = (
            'subscription { orderUpdated(id: "x") '
            "{ order { lines { unitPrice { currencyCode } } } } }"
        )
        await socket.send(
            json.dumps({"type": "subscribe", "id": "deep", "payload": {"query": deep}})
        )
        refused = await receive(socket)
        assert refused["type"] == "error"
        assert refused["payload"][0]["extensions"]["code"] == "GRAPHQL_DEPTH_LIMIT"


async def test_protocol_refusals_and_connection_limits(suite: Suite) -> None:
    async with suite.serve(
        graphql_ws_init_timeout_seconds=0.5,
        graphql_ws_idle_timeout_seconds=1.0,
        graphql_ws_max_connections_per_user=1,
        graphql_ws_max_subscriptions=1,
        graphql_live_refresh_seconds=600,
    ) as url:
        with pytest.raises(InvalidStatus) as caught:  # not the GraphQL subprotocol
            async with connect(ws_url(url)):
                pass
        assert caught.value.response.status_code == 403
        async with connect(ws_url(url), subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            assert await closed_with(socket) == (4408, "connection initialisation timeout")
        async with connect(ws_url(url), subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            await subscribe(socket, "1", ORDER_ID)
            assert await closed_with(socket) == (4401, "unauthorized")
        async with connect(ws_url(url), subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            await socket.send(
                json.dumps({"type": "connection_init", "payload": {"Authorization": "Bearer nope"}})
            )
            code, _ = await closed_with(socket)
            assert code == 4403
        async with connected(url, suite.tokens.customer) as socket:
            # A second connection of the same user is one too many.
            async with connect(ws_url(url), subprotocols=[PROTOCOL]) as second:  # type: ignore[list-item]
                init = {"Authorization": f"Bearer {suite.tokens.customer}"}
                await second.send(json.dumps({"type": "connection_init", "payload": init}))
                assert await closed_with(second) == (4429, "too many connections")
            await subscribe(socket, "1", ORDER_ID)
            assert (await receive(socket))["type"] == "next"
            await subscribe(socket, "2", ORDER_ID)  # one at a time per connection
            refused = await receive(socket)
            assert refused["type"] == "error"
            assert refused["payload"][0]["extensions"]["code"] == "GRAPHQL_SUBSCRIPTION_LIMIT"
            await subscribe(socket, "1", ORDER_ID)  # an id already running
            assert await closed_with(socket) == (4409, "subscriber for 1 already exists")
        # The limit counted the closed connections out; an idle one is closed after its timeout.
        async with connected(url, suite.tokens.customer) as socket:
            assert await closed_with(socket) == (1000, "idle timeout")
        async with connected(url, suite.tokens.customer) as socket:
            await socket.send("not json")
            assert await closed_with(socket) == (4400, "a message is not JSON")


async def test_each_connection_ends_with_an_access_line(
    suite: Suite, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mercato.access")

    def lines() -> list[logging.LogRecord]:
        return [r for r in caplog.records if r.name == "mercato.access" and r.msg == "websocket"]

    async with suite.serve(
        graphql_ws_init_timeout_seconds=0.5, graphql_live_refresh_seconds=600
    ) as url:
        async with connected(url, suite.tokens.customer) as socket:
            await subscribe(socket, "1", ORDER_ID)
            assert (await receive(socket))["type"] == "next"
        async with connect(ws_url(url), subprotocols=[PROTOCOL]) as socket:  # type: ignore[list-item]
            assert (await closed_with(socket))[0] == 4408
        for _ in range(250):
            if len(lines()) == 2:
                break
            await asyncio.sleep(0.02)
    subscriber, silent = lines()
    for line in (subscriber, silent):
        assert line.http_route == "/graphql"
        assert re.fullmatch(r"[0-9a-f]{32}", line.request_id)
        assert line.client_address == "127.0.0.1"
        assert line.duration_ms > 0
    assert (subscriber.websocket_close_code, subscriber.websocket_close_reason) == (
        1000,
        "disconnected",
    )
    assert subscriber.graphql_operations == 1
    assert subscriber.subject
    assert silent.websocket_close_code == 4408
    assert silent.graphql_operations == 0
    assert silent.subject is None
    assert suite.tokens.customer not in caplog.text  # no token in the access lines


async def test_subscriptions_are_not_served_over_post(suite: Suite) -> None:
    app = await suite.gateway()
    async with suite.client(app) as client:
        response = await client.post(
            "/graphql",
            json={"query": WATCH, "variables": {"id": ORDER_ID}},
            headers={"authorization": f"Bearer {suite.tokens.customer}"},
        )
    assert response.status_code == 400
    assert "WebSocket" in response.json()["errors"][0]["message"]
