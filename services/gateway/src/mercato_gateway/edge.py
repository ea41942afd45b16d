"""What every HTTP request gets, whatever its route: the outermost ASGI middleware.

Request id (``X-Request-Id`` echoed when well-formed, else generated), a SERVER span whose parent
is the caller's W3C trace context (``traceparent``/``tracestate``) and whose id goes back in
``traceresponse``, security headers, RED metrics per route template and status, one JSON
access-log line, and a generic 500 for anything that escaped the handlers.
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from collections.abc import MutableMapping
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mercato_common.telemetry import trace_exemplar

__all__ = ["GRAPHQL_FIELDS_KEY", "REQUEST_ID_KEY", "ROUTE_KEY", "EdgeMiddleware", "HttpMetrics"]

_access_log = logging.getLogger("mercato.access")
_log = logging.getLogger("mercato_gateway.edge")

# Keys of the ASGI scope the handlers fill for the middleware.
ROUTE_KEY = "mercato.route"
REQUEST_ID_KEY = "mercato.request_id"
SUBJECT_KEY = "mercato.subject"
CLIENT_KEY = "mercato.client"
#: The root fields of a GraphQL request (``query getProduct,listProducts``), for its access line.
GRAPHQL_FIELDS_KEY = "mercato.graphql_fields"

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
_SECURITY_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-resource-policy", b"same-origin"),
)
_DEFAULT_CSP = (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")


class HttpMetrics:
    """RED metrics of the HTTP server; ``route`` is the template (low cardinality)."""

    # Seconds. Measured (bench/results): cached product reads 1-5 ms, orders 100-500 ms under
    # load; 0.5 s is the latency SLO's threshold; upstream deadlines end before 30 s.
    BUCKETS = (
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0
    )  # fmt: skip

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.requests = Counter(
            "http_server_requests_total",
            "HTTP requests served, by method, route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "http_server_request_duration_seconds",
            "Time to serve an HTTP request, by method and route template.",
            ["method", "route"],
            buckets=self.BUCKETS,
            registry=registry,
        )
        self.in_flight = Gauge(
            "http_server_requests_in_flight",
            "HTTP requests being served.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # The labelled children, looked up once per label set (``labels()`` takes a lock and
        # validates the labels on every call); bounded by routes x methods x statuses.
        self._counted: dict[tuple[str, str, int], Any] = {}
        self._timed: dict[tuple[str, str], Any] = {}

    def observe(
        self,
        method: str,
        route: str,
        status: int,
        seconds: float,
        exemplar: dict[str, str] | None = None,
    ) -> None:
        counted = self._counted.get((method, route, status))
        if counted is None:
            counted = self.requests.labels(method, route, str(status))
            self._counted[(method, route, status)] = counted
        counted.inc()
        timed = self._timed.get((method, route))
        if timed is None:
            timed = self._timed[(method, route)] = self.duration.labels(method, route)
        timed.observe(seconds, exemplar)


#: The request headers the edge reads, found in one pass over the headers.
_EDGE_HEADERS = frozenset(
    (b"x-request-id", b"traceparent", b"tracestate", b"origin", b"user-agent")
)
_VARY_ORIGIN = (b"vary", b"Origin")


def _edge_headers(scope: Scope) -> dict[bytes, str]:
    found: dict[bytes, str] = {}
    for key, value in scope.get("headers", ()):
        if key in _EDGE_HEADERS and key not in found:
            found[key] = value.decode("latin-1")
    return found


class Draining:
    """Set once the process is going away: readiness fails and answers close their connection."""

    def __init__(self) -> None:
        self.active = False


_CONNECTION_CLOSE = (b"connection", b"close")


class EdgeMiddleware:
    """``app`` serves the request; ``cross_origin`` (the CORS middleware around ``app``) serves
    it instead when it carries an ``Origin``, so that requests without one (server-to-server
    calls, most of the traffic) do not pay for the CORS layer. Those answers still say
    ``Vary: Origin``: a shared cache must not serve them to a cross-origin caller."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        cross_origin: ASGIApp | None = None,
        metrics: HttpMetrics,
        hsts: bool = False,
        draining: Draining | None = None,
    ) -> None:
        self.app = app
        self._cross_origin = cross_origin
        self._metrics = metrics
        self._hsts = hsts
        self._draining = draining if draining is not None else Draining()
        self._tracer = trace.get_tracer("mercato_gateway")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        found = _edge_headers(scope)
        incoming = found.get(b"x-request-id")
        # 128 random bits as 32 hex digits: the shape of uuid4().hex, at a third of its cost.
        request_id = incoming if incoming and _REQUEST_ID.match(incoming) else os.urandom(16).hex()
        scope[REQUEST_ID_KEY] = request_id
        carrier = {}
        for name in (b"traceparent", b"tracestate"):
            value = found.get(name)
            if value is not None:
                carrier[name.decode()] = value
        # No trace headers: a root span (what extracting from an empty carrier gives).
        parent = propagate.extract(carrier) if carrier else Context()
        app = self.app
        if self._cross_origin is not None and b"origin" in found:
            app = self._cross_origin
        # Answers that skipped the CORS layer still vary with Origin (see the class docstring).
        vary_origin = self._cross_origin is not None and app is self.app
        method = scope["method"]
        state: dict[str, Any] = {"status": 500, "started": False, "bytes": 0}
        self._metrics.in_flight.inc()
        with self._tracer.start_as_current_span(
            method,  # renamed to "{method} {route}" once the route is known
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            context = span.get_span_context()
            trace_response = (
                f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}"
                if context.is_valid
                else None
            )

            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    state["status"] = message["status"]
                    state["started"] = True
                    headers = list(message.get("headers", ()))
                    names = {key.lower() for key, _ in headers}
                    headers.append((b"x-request-id", request_id.encode()))
                    headers.extend(h for h in _SECURITY_HEADERS if h[0] not in names)
                    if b"content-security-policy" not in names:
                        headers.append(_DEFAULT_CSP)
                    if self._hsts:
                        headers.append((b"strict-transport-security", b"max-age=31536000"))
                    if trace_response:
                        headers.append((b"traceresponse", trace_response.encode()))
                    if vary_origin:
                        headers.append(_VARY_ORIGIN)
                    if self._draining.active:
                        # Keep-alive clients reconnect, to a replica that is not going away.
                        headers.append(_CONNECTION_CLOSE)
                    message = {**message, "headers": headers}
                elif message["type"] == "http.response.body":
                    state["bytes"] += len(message.get("body", b""))
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            except Exception:
                _log.exception("unhandled error", extra={"request_id": request_id})
                if state["started"]:
                    raise
                await _internal_error(send_wrapper, request_id)
            finally:
                elapsed = time.perf_counter() - started
                self._metrics.in_flight.dec()
                route = scope.get(ROUTE_KEY, "unmatched")
                status = state["status"]
                span.update_name(f"{method} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)
                if status >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                self._metrics.observe(method, route, status, elapsed, trace_exemplar(span))
                _access_log.info(
                    "http",
                    extra={
                        "http_method": method,
                        "http_route": route,
                        "http_status": status,
                        "duration_ms": round(elapsed * 1000, 3),
                        "response_bytes": state["bytes"],
                        "request_id": request_id,
                        "client_address": client_address(scope),
                        "subject": scope.get(SUBJECT_KEY),
                        "user_agent": found.get(b"user-agent"),
                        "graphql_fields": scope.get(GRAPHQL_FIELDS_KEY),
                    },
                )


async def _internal_error(send: Send, request_id: str) -> None:
    body = json.dumps(
        {
            "error": {
                "code": 500,
                "status": "INTERNAL",
                "message": "internal error",
                "reason": "INTERNAL",
                "domain": "gateway.mercato",
                "metadata": {},
                "fieldViolations": [],
                "requestId": request_id,
            }
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"cache-control", b"no-store"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def client_address(scope: MutableMapping[str, Any]) -> str:
    """The client's address for access lines: the one the gate resolved (trusted proxies
    followed), else the peer's."""
    resolved: str | None = scope.get(CLIENT_KEY)
    return resolved or (scope.get("client") or ("", 0))[0]


def header_map(scope: MutableMapping[str, Any]) -> dict[str, str]:
    """Request headers, lower-cased names, repeated ones joined with ``, ``."""
    headers: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        name = key.decode("latin-1").lower()
        text = value.decode("latin-1")
        headers[name] = f"{headers[name]}, {text}" if name in headers else text
    return headers
