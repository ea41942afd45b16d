"""One order, one trace: gateway, orders, catalog, PostgreSQL, MongoDB, outbox relay, Kafka,
analytics.

The suite's processes export their spans over OTLP to the tests' receiver (``otlp`` fixture),
exactly as they would to a collector in production. The order is placed through the gateway; its
``traceresponse`` header names the trace, and the test waits until every hop's span arrived.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable

import pytest
from conftest import PASSWORD, Api
from otlp_receiver import OtlpReceiver, ReceivedSpan

pytestmark = pytest.mark.e2e

ORDER_EVENTS = "mercato.orders.events.v1"
TRACE_TIMEOUT = 60.0


def _find(spans: list[ReceivedSpan], service: str, kind: str, name: str) -> ReceivedSpan | None:
    return next(
        (s for s in spans if s.service == service and s.kind_name == kind and s.name == name), None
    )


#: Each hop of an order's trace: (what it is, how to find its span).
HOPS: dict[str, Callable[[list[ReceivedSpan]], ReceivedSpan | None]] = {
    "gateway HTTP server": lambda s: _find(s, "gateway", "SERVER", "POST /v1/orders"),
    "orders gRPC server": lambda s: _find(
        s, "orders", "SERVER", "mercato.orders.v1.OrdersService/CreateOrder"
    ),
    "catalog gRPC server (reserve)": lambda s: _find(
        s, "catalog", "SERVER", "mercato.catalog.v1.CatalogService/ReserveStock"
    ),
    "orders PostgreSQL statement": lambda s: next(
        (
            x
            for x in s
            if x.service == "orders"
            and x.kind_name == "CLIENT"
            and x.attributes.get("db.system.name") == "postgresql"
        ),
        None,
    ),
    "catalog MongoDB command": lambda s: next(
        (
            x
            for x in s
            if x.service == "catalog"
            and x.kind_name == "CLIENT"
            and x.attributes.get("db.system.name") == "mongodb"
        ),
        None,
    ),
    # The aiokafka instrumentation's span of the relay's send.
    "orders outbox relay (Kafka send)": lambda s: _find(
        s, "orders", "PRODUCER", f"{ORDER_EVENTS} send"
    ),
    "analytics consumer": lambda s: _find(s, "analytics", "CONSUMER", f"process {ORDER_EVENTS}"),
}


def _orphans(spans: list[ReceivedSpan]) -> list[str]:
    """Spans whose parent is not (yet) among ``spans``, the root excepted."""
    ids = {span.span_id for span in spans}
    return [
        f"{s.service} {s.name}" for s in spans if s.parent_span_id and s.parent_span_id not in ids
    ]


def _wait_for_trace(otlp: OtlpReceiver, trace_id: str) -> list[ReceivedSpan]:
    """The trace once every hop's span arrived and every span's parent did too (processes
    export in batches, so a child can arrive before its parent)."""
    deadline = time.monotonic() + TRACE_TIMEOUT
    while True:
        spans = otlp.trace(trace_id)
        missing = [hop for hop, find in HOPS.items() if find(spans) is None]
        orphans = _orphans(spans)
        if not missing and not orphans:
            return spans
        if time.monotonic() > deadline:
            seen = sorted({f"{s.service} {s.kind_name} {s.name}" for s in spans})
            raise AssertionError(
                f"trace {trace_id}: no span for {missing}; parent never arrived for {orphans}; "
                f"spans seen: {seen}"
            )
        time.sleep(0.5)


def test_an_order_is_one_trace_from_gateway_to_analytics(
    otlp: OtlpReceiver, customer: Api, admin: Api
) -> None:
    sku = admin.create_product(stock=5)
    response = customer.create_order([(sku, 1)])
    customer.ok(response)
    trace_id = response.headers["traceresponse"].split("-")[1]
    spans = _wait_for_trace(otlp, trace_id)

    # One tree, rooted at the gateway's span (_wait_for_trace saw every other parent arrive).
    by_id = {span.span_id: span for span in spans}
    root = HOPS["gateway HTTP server"](spans)
    assert root is not None
    assert [s for s in spans if not s.parent_span_id] == [root]

    # The chain runs through the hops in order: each is a descendant of the one before.
    def ancestors(span: ReceivedSpan) -> set[str]:
        found: set[str] = set()
        while span.parent_span_id in by_id:
            span = by_id[span.parent_span_id]
            found.add(span.span_id)
        return found

    chain = [
        HOPS[hop](spans)
        for hop in (
            "gateway HTTP server",
            "orders gRPC server",
            "orders outbox relay (Kafka send)",
            "analytics consumer",
        )
    ]
    for parent, child in itertools.pairwise(chain):
        assert parent is not None
        assert child is not None
        assert parent.span_id in ancestors(child), (
            f"{child.name} does not descend from {parent.name}"
        )

    # OpenTelemetry semantic-convention attributes on each kind of hop.
    assert root.attributes["http.request.method"] == "POST"
    assert root.attributes["http.route"] == "/v1/orders"
    assert root.attributes["http.response.status_code"] == 200
    grpc_server = HOPS["orders gRPC server"](spans)
    assert grpc_server is not None
    assert grpc_server.attributes["rpc.system"] == "grpc"
    assert grpc_server.attributes["rpc.service"] == "mercato.orders.v1.OrdersService"
    assert grpc_server.attributes["rpc.method"] == "CreateOrder"
    for hop in ("orders outbox relay (Kafka send)", "analytics consumer"):
        messaging = HOPS[hop](spans)
        assert messaging is not None
        assert messaging.attributes["messaging.system"] == "kafka"
        assert messaging.attributes["messaging.destination.name"] == ORDER_EVENTS

    # No secrets or personal data in any attribute of the trace.
    assert customer.email is not None
    assert customer.token is not None
    forbidden = {
        "customer email": customer.email,
        "customer password": PASSWORD,
        "access token": customer.token,
        "token signature": customer.token.rsplit(".", 1)[-1],
    }
    for span in spans:
        for key, value in span.attributes.items():
            for what, secret in forbidden.items():
                assert secret not in str(value), f"{what} in {span.service} {span.name} {key}"
