"""``POST /graphql``: GraphQL operations over the schema of ``graph_schema``.

The request is a JSON object ``{"query", "variables", "operationName", "extensions"}``
(GraphQL over HTTP, ``application/json``), or a list of them (a batch). The same gate as REST
admits it once per request: the bearer token verified (a bad one is a 401 for the whole
request), then the ``default`` rate limit (429); a request whose root fields include a route of
another class (the public writes: ``login``, ``registerUser``) also spends one token of that
class, so GraphQL is no way around REST's stricter limit. Every operation is parsed, validated
and measured against the limits (``graph_limits``) before the first runs. Each root field then
checks its RPC's access rule (a missing identity or scope is an error of that field,
``UNAUTHENTICATED`` / ``PERMISSION_DENIED``) and calls the service with the caller's token,
address and request id, within the route's deadline. References (an order line's ``product``)
are loaded per operation through a DataLoader: every key the operation reaches goes into one
call of the batch RPC (more only beyond its largest batch), with the same access rule and token.

Answers: 200 with ``{"data", "errors"}`` once the operation ran (field errors included); 400 with
``{"errors"}`` for a request that is not GraphQL (bad JSON, a syntax error, a document the schema
refuses), and the gate's refusals with their HTTP status. Every error carries
``extensions.code`` (the REST error's ``reason``) and ``extensions.status``; errors of services
add ``domain``, ``metadata``, ``fieldViolations`` (JSON names of the RPC's request fields, which
are the root field's arguments) and ``preconditionViolations`` as the REST error body has them.
Messages of server faults are generic, as in REST.

A WebSocket on the same path speaks ``graphql-transport-ws`` (``graph_socket``) for
subscriptions: a subscription root field (``orderUpdated``, from ``(mercato.api.v1.live)``)
answers its RPC's result now and again each time ``graph_live`` sees an event of the resource,
the RPC called each time with the subscriber's token, so its access rule and ownership hold.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import inspect
import json
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import orjson
from aiodataloader import DataLoader
from buf.validate import validate_pb2
from google.protobuf import json_format
from graphql import (
    DocumentNode,
    ExecutionResult,
    FragmentDefinitionNode,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    execute,
    parse,
    subscribe,
    validate,
)
from opentelemetry import trace
from prometheus_client import CollectorRegistry, Counter, Histogram

from mercato.api.v1 import live_pb2, reference_pb2
from mercato_common.kafka import KafkaConnection
from mercato_gateway.edge import GRAPHQL_FIELDS_KEY, ROUTE_KEY, HttpMetrics, header_map
from mercato_gateway.errors import ApiError
from mercato_gateway.graph_executor import PlainFieldExecutor
from mercato_gateway.graph_limits import GraphLimits, Measure, measure, refusal
from mercato_gateway.graph_live import EventFanout, Watch
from mercato_gateway.graph_schema import build_schema, graph_routes, live_option, root_field_name
from mercato_gateway.graph_socket import GraphSocket, Operation, SocketLimits
from mercato_gateway.proxy import (
    Caller,
    Gate,
    check_length,
    json_media,
    media_type,
    method_not_allowed,
    read_body,
    send_response,
    unsupported_media,
)
from mercato_gateway.routing import Route
from mercato_gateway.transcode import parse_message

__all__ = ["GRAPHQL_PATH", "GraphEndpoint", "PersistedQueries"]

GRAPHQL_PATH = "/graphql"
#: The rate-limit class of a GraphQL request (one decision per request).
RATE_CLASS = "default"

_log = logging.getLogger("mercato_gateway.graphql")


#: Keys per call of a batch RPC whose keys field states no ``max_items``.
DEFAULT_BATCH_KEYS = 100
#: Queries up to this long are kept parsed and validated (bounds the cache's memory).
CACHED_QUERY_CHARS = 16_384


class GraphMetrics:
    """RED per GraphQL root field (the operations of this API; a client's own operation names
    are not labels: they are unbounded): requests by field, operation type and gRPC status code
    (``OK`` for success), and their duration."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "gateway_graphql_field_requests_total",
            "GraphQL root fields resolved, by field, operation type and status code.",
            ["field", "operation_type", "code"],
            registry=registry,
        )
        self.duration = Histogram(
            "gateway_graphql_field_duration_seconds",
            "Time to resolve a GraphQL root field (its RPC included).",
            ["field", "operation_type"],
            buckets=HttpMetrics.BUCKETS,
            registry=registry,
        )


@dataclass(frozen=True, slots=True)
class _Context:
    """What the resolvers of one operation share: the caller, and the operation's loaders (one
    per batch RPC and keys field, so keys of one operation share calls and answers)."""

    caller: Caller
    loaders: dict[tuple[str, str], DataLoader[str, dict[str, Any] | None]] = field(
        default_factory=dict
    )
    #: What a subscription holds (its watch), released when the operation ends.
    holds: contextlib.ExitStack = field(default_factory=contextlib.ExitStack)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """One operation of a request, parsed, validated and within the limits."""

    document: DocumentNode
    variables: dict[str, Any] | None
    operation_name: str | None
    roots: tuple[str, ...]
    cost: int
    kind: OperationType


class PersistedQueries:
    """Automatic persisted queries (Apollo's protocol, version 1): a client sends the SHA-256 of
    a query; on a miss (``PERSISTED_QUERY_NOT_FOUND``) it sends both, and the query is kept.
    Per process, the ``size`` most recently used; another replica's miss only costs the client
    one more round trip."""

    def __init__(self, size: int) -> None:
        self._size = size
        self._queries: OrderedDict[str, str] = OrderedDict()

    def resolve(self, query: str | None, extensions: Any) -> tuple[str, str | None]:
        """The query to run, and the hash to :meth:`remember` it by once it proved valid (None:
        nothing to keep)."""
        persisted = extensions.get("persistedQuery") if isinstance(extensions, dict) else None
        if persisted is None:
            if query is None:
                raise ApiError.bad_request("query: a GraphQL document is required")
            return query, None
        if self._size == 0:
            raise ApiError.bad_request(
                "persisted queries are not supported", reason="PERSISTED_QUERY_NOT_SUPPORTED"
            )
        digest = persisted.get("sha256Hash") if isinstance(persisted, dict) else None
        if persisted.get("version") != 1 or not isinstance(digest, str):
            raise ApiError.bad_request("extensions.persistedQuery: version 1 with sha256Hash")
        if query is None:
            known = self._queries.get(digest)
            if known is None:
                raise ApiError(
                    200, "NOT_FOUND", "PersistedQueryNotFound", "PERSISTED_QUERY_NOT_FOUND"
                )
            self._queries.move_to_end(digest)
            return known, None
        if hashlib.sha256(query.encode()).hexdigest() != digest:
            raise ApiError.bad_request(
                "the query's SHA-256 is not sha256Hash", reason="PERSISTED_QUERY_HASH_MISMATCH"
            )
        return query, digest

    def remember(self, digest: str, query: str) -> None:
        """Keep a query that parsed, validated and stayed within the limits."""
        self._queries[digest] = query
        self._queries.move_to_end(digest)
        while len(self._queries) > self._size:
            self._queries.popitem(last=False)


class GraphEndpoint:
    """The ASGI app of ``POST /graphql``."""

    def __init__(
        self,
        routes: list[Route],
        gate: Gate,
        *,
        max_body_bytes: int,
        limits: GraphLimits,
        persisted_queries: int,
        kafka: KafkaConnection,
        topic_prefix: str,
        live_refresh_seconds: float,
        socket_limits: SocketLimits,
        registry: CollectorRegistry,
        checked_queries: int = 1000,
    ) -> None:
        self._gate = gate
        self._max_body = max_body_bytes
        self._limits = limits
        self._persisted = PersistedQueries(persisted_queries)
        chosen = graph_routes(routes)
        self.schema: GraphQLSchema = build_schema(chosen, self)
        self._routes = {root_field_name(route): route for route in chosen}
        self._topic_prefix = topic_prefix
        topics = [topic_prefix + live.topic for live in map(live_option, chosen) if live]
        #: What the subscriptions read (None: the contracts have no live RPC); a part to start.
        self.live = EventFanout(kafka, topics, registry=registry) if topics else None
        self._live_refresh = live_refresh_seconds
        self.socket = GraphSocket(
            gate, self._start, socket_limits, rate_class=RATE_CLASS, registry=registry
        )
        self._metrics = GraphMetrics(registry)
        # Parsing and validating cost ~2.5 ms a query (bench profile) and clients send the same
        # few queries over and over: the outcome of the most recent ones is kept (documents are
        # never changed once parsed; refusals are kept too, as error bodies).
        self._checked = functools.lru_cache(maxsize=checked_queries)(self._check)
        self._measured = functools.lru_cache(maxsize=checked_queries)(self._measure_cached)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            await self.socket(scope, receive, send)
            return
        scope[ROUTE_KEY] = GRAPHQL_PATH
        rate_headers: dict[str, str] = {}
        body: Any
        try:
            status, body = await self._handle(scope, receive, rate_headers)
        except ApiError as error:
            status, body = error.http_status, {"errors": [_api_error(error)]}
            rate_headers = {**rate_headers, **error.all_headers()}
            if status == 401:
                challenge = self._gate.authenticator.challenge_for(error.reason)
                rate_headers.setdefault("www-authenticate", challenge)
        headers = {
            "content-type": "application/json",
            "cache-control": "no-store",
            **rate_headers,
        }
        await send_response(send, status, orjson.dumps(body), headers)

    async def _handle(
        self, scope: Any, receive: Any, rate_headers: dict[str, str]
    ) -> tuple[int, Any]:
        if scope["method"] != "POST":
            raise method_not_allowed(scope["method"], ["POST"])
        headers = header_map(scope)
        client = self._gate.client(scope, headers)
        check_length(headers.get("content-length"), self._max_body)
        if not json_media(media_type(headers.get("content-type"))):
            raise unsupported_media("application/json")
        caller = await self._gate.admit(
            scope, headers, client, rate_class=RATE_CLASS, rate_headers=rate_headers
        )
        try:
            payload = json.loads(await read_body(receive, self._max_body))
        except (ValueError, UnicodeDecodeError):
            raise ApiError.bad_request("the request body is not JSON") from None
        # A batch is a list of operations, checked together (count, then their summed cost)
        # before any of them runs.
        batch = isinstance(payload, list)
        requests = payload if batch else [payload]
        if batch:
            self._limits.check_batch(len(requests))
            if not requests:
                raise ApiError.bad_request("an empty batch")
        prepared: list[_Prepared] = []
        for request in requests:
            outcome = self._prepare(request)
            if isinstance(outcome, dict):  # not GraphQL: parse or validation errors
                return 400, outcome  # a batch fails as a whole, before any operation runs
            if outcome.kind is OperationType.SUBSCRIPTION:
                raise ApiError.bad_request("subscriptions are served over WebSocket only")
            prepared.append(outcome)
        await self._admit_operations(prepared, caller, rate_headers)
        scope[GRAPHQL_FIELDS_KEY] = "; ".join(
            f"{one.kind.value} {','.join(one.roots)}" for one in prepared
        )
        results = [await self._execute(one, caller) for one in prepared]
        if batch:
            return 200, [body for _, body in results]
        return results[0]

    async def _admit_operations(
        self, prepared: list[_Prepared], caller: Caller, rate_headers: dict[str, str]
    ) -> None:
        """The summed cost within the limit, and one decision of every stricter rate class
        the operations' root fields belong to (public writes)."""
        cost = sum(one.cost for one in prepared)
        if cost > self._limits.max_cost:
            raise refusal("GRAPHQL_COST_LIMIT", "cost", cost, self._limits.max_cost)
        classes = {
            self._routes[name].rate_class
            for one in prepared
            for name in one.roots
            if name in self._routes
        }
        for rate_class in sorted(classes - {RATE_CLASS}):
            await self._gate.limit(caller, rate_class, rate_headers)

    async def _start(self, payload: Any, caller: Caller) -> list[dict[str, Any]] | Operation:
        """One operation sent over WebSocket: one rate-limit decision, the same checks as over
        HTTP, then its results (one for a query or mutation, a stream for a subscription)."""
        context = _Context(caller)
        try:
            await self._gate.limit(caller, RATE_CLASS, {})
            prepared = self._prepare(payload)
            if isinstance(prepared, dict):
                return list(prepared["errors"])
            await self._admit_operations([prepared], caller, {})
            if prepared.kind is not OperationType.SUBSCRIPTION:
                _, body = await self._execute(prepared, caller)
                if body.get("data") is None and "errors" in body:
                    return list(body["errors"])
                return Operation(_one(body), context.holds.close)
            stream = subscribe(
                self.schema,
                prepared.document,
                context_value=context,
                variable_values=prepared.variables,
                operation_name=prepared.operation_name,
            )
            if inspect.isawaitable(stream):
                stream = await stream
        except ApiError as error:
            context.holds.close()
            return [_api_error(error)]
        if isinstance(stream, ExecutionResult):
            context.holds.close()
            return [_field_error(error) for error in stream.errors or ()]
        return Operation(_bodies(stream), context.holds.close)

    def _check(self, query: str) -> DocumentNode | dict[str, Any]:
        """The query parsed and validated against the schema, or the errors that refuse it."""
        try:
            document = parse(query, max_tokens=self._limits.max_tokens)
        except GraphQLError as error:
            return {"errors": [_graphql_error(error, "GRAPHQL_PARSE_FAILED")]}
        refused = validate(self.schema, document)
        if refused:
            return {
                "errors": [_graphql_error(error, "GRAPHQL_VALIDATION_FAILED") for error in refused]
            }
        return document

    def _prepare(self, request: Any) -> _Prepared | dict[str, Any]:
        """One operation parsed, validated and measured against the limits; a GraphQL error
        body when it is not a valid document."""
        query, variables, operation_name, extensions = _graphql_request(request)
        query, digest = self._persisted.resolve(query, extensions)
        cached = len(query) <= CACHED_QUERY_CHARS
        checked = self._checked(query) if cached else self._check(query)
        if isinstance(checked, dict):
            return checked
        if cached:
            # The figures depend on the document, the operation and the page sizes, which
            # only integer variables give.
            numbers = tuple(
                (name, value) for name, value in (variables or {}).items() if type(value) is int
            )
            kind, figures = self._measured(query, operation_name, numbers)
        else:
            kind, figures = _measure(self.schema, checked, operation_name, variables)
        self._limits.check(figures)
        if digest is not None:
            self._persisted.remember(digest, query)
        return _Prepared(checked, variables, operation_name, figures.roots, figures.cost, kind)

    def _measure_cached(
        self, query: str, operation_name: str | None, numbers: tuple[tuple[str, int], ...]
    ) -> tuple[OperationType, Measure]:
        document = self._checked(query)
        assert not isinstance(document, dict)  # only documents that passed are measured
        return _measure(self.schema, document, operation_name, dict(numbers))

    async def _execute(self, prepared: _Prepared, caller: Caller) -> tuple[int, dict[str, Any]]:
        # OpenTelemetry's GraphQL attributes on the request's span (one span per root field
        # cost a tenth of the gateway's CPU per request; the RPCs have their client spans).
        span = trace.get_current_span()
        span.set_attribute("graphql.operation.type", prepared.kind.value)
        if prepared.operation_name:
            span.set_attribute("graphql.operation.name", prepared.operation_name)
        result = execute(
            self.schema,
            prepared.document,
            context_value=_Context(caller),
            variable_values=prepared.variables,
            operation_name=prepared.operation_name,
            executor_class=PlainFieldExecutor,
        )
        if not isinstance(result, ExecutionResult):
            result = await result
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [_field_error(error) for error in result.errors]
        if result.data is None and all(error.path is None for error in result.errors or ()):
            # Nothing ran: the variables did not fit the document.
            return 400, body
        return 200, body

    async def resolve(self, route: Route, arguments: dict[str, Any], info: Any) -> dict[str, Any]:
        """A root field: its RPC (a gRPC client span under the request's span), counted and
        timed per field."""
        kind = info.operation.operation.value
        started, code = time.perf_counter(), "OK"
        try:
            caller: Caller = info.context.caller
            self._gate.authenticator.authorize(route.access, caller.identity)
            request = route.request_class()
            parse_message(arguments, request)
            response = await self._gate.call(route, request, caller)
        except ApiError as error:
            code = error.status
            raise
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception:
            code = "INTERNAL"
            raise
        finally:
            self._metrics.requests.labels(info.field_name, kind, code).inc()
            self._metrics.duration.labels(info.field_name, kind).observe(
                time.perf_counter() - started
            )
        document: dict[str, Any] = json_format.MessageToDict(
            response, always_print_fields_with_no_presence=True
        )
        return document

    async def relate(
        self, route: Route, reference: reference_pb2.Reference, key: str, info: Any
    ) -> dict[str, Any] | None:
        context: _Context = info.context
        loader = context.loaders.get((route.full_method, reference.keys))
        if loader is None:
            keys = route.request_descriptor.fields_by_name[reference.keys]
            rules = keys.GetOptions().Extensions[validate_pb2.field]
            loader = DataLoader(
                partial(self._load, route, reference, context.caller),
                max_batch_size=rules.repeated.max_items or DEFAULT_BATCH_KEYS,
            )
            context.loaders[(route.full_method, reference.keys)] = loader
        return await loader.load(key)

    async def _load(
        self,
        route: Route,
        reference: reference_pb2.Reference,
        caller: Caller,
        keys: list[str],
    ) -> list[dict[str, Any] | None]:
        """One call of the batch RPC for ``keys``; a page (AIP-158 ``page_size``) as large as
        the batch."""
        self._gate.authenticator.authorize(route.access, caller.identity)
        request = route.request_class()
        getattr(request, reference.keys).extend(keys)
        if "page_size" in route.request_descriptor.fields_by_name:
            setattr(request, "page_size", len(keys))  # noqa: B010 (any batch RPC's request)
        response = await self._gate.call(route, request, caller)
        found = {
            getattr(item, reference.key): json_format.MessageToDict(
                item, always_print_fields_with_no_presence=True
            )
            for item in getattr(response, reference.results)
        }
        return [found.get(key) for key in keys]

    async def watch(
        self, route: Route, live: live_pb2.Live, arguments: dict[str, Any], info: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """The resource now, then again whenever an event names it (or every refresh period),
        when it differs from what was last sent. The watch starts before the first read, so no
        change between the two is lost."""
        context: _Context = info.context
        self._gate.authenticator.authorize(route.access, context.caller.identity)
        assert self.live is not None  # the schema has a subscription only for a live RPC
        key_field = route.request_descriptor.fields_by_name[live.key]
        key = str(arguments.get(key_field.json_name) or "")
        watch = context.holds.enter_context(self.live.watch(self._topic_prefix + live.topic, key))
        first = await self.resolve(route, arguments, info)
        return self._changes(route, arguments, info, watch, first)

    async def _changes(
        self,
        route: Route,
        arguments: dict[str, Any],
        info: Any,
        watch: Watch,
        document: dict[str, Any],
    ) -> AsyncIterator[dict[str, Any]]:
        context: _Context = info.context
        yield document
        while True:
            await watch.changed(self._live_refresh)
            context.loaders.clear()  # references are read again for each message
            try:
                current = await self.resolve(route, arguments, info)
            except ApiError as error:
                if error.status in ("UNAVAILABLE", "DEADLINE_EXCEEDED"):
                    continue  # read again at the next event or refresh
                raise
            if current != document:
                document = current
                yield document


def _measure(
    schema: GraphQLSchema,
    document: DocumentNode,
    operation_name: str | None,
    variables: dict[str, Any] | None,
) -> tuple[OperationType, Measure]:
    """The kind and figures of the document's operation named ``operation_name`` (its only
    one when None)."""
    operations = [
        node
        for node in document.definitions
        if isinstance(node, OperationDefinitionNode)
        and (operation_name is None or (node.name and node.name.value == operation_name))
    ]
    if len(operations) != 1:
        raise ApiError.bad_request("operationName: name one operation of the document")
    fragments = {
        node.name.value: node
        for node in document.definitions
        if isinstance(node, FragmentDefinitionNode)
    }
    return operations[0].operation, measure(schema, operations[0], fragments, variables)


async def _one(body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
    yield body


async def _bodies(results: AsyncIterator[ExecutionResult]) -> AsyncIterator[dict[str, Any]]:
    async for result in results:
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [_field_error(error) for error in result.errors]
        yield body


def _graphql_request(document: Any) -> tuple[str | None, dict[str, Any] | None, str | None, Any]:
    if not isinstance(document, dict):
        raise ApiError.bad_request("a GraphQL request is a JSON object")
    query, variables = document.get("query"), document.get("variables")
    operation_name = document.get("operationName")
    if query is not None and (not isinstance(query, str) or not query.strip()):
        raise ApiError.bad_request("query: a GraphQL document is required")
    if variables is not None and not isinstance(variables, dict):
        raise ApiError.bad_request("variables: must be an object")
    if operation_name is not None and not isinstance(operation_name, str):
        raise ApiError.bad_request("operationName: must be a string")
    return query, variables, operation_name, document.get("extensions")


def _api_error(error: ApiError, located: GraphQLError | None = None) -> dict[str, Any]:
    """An :class:`ApiError` as a GraphQL error: the REST error body's members as extensions."""
    body = error.body()["error"]
    extensions = {
        "code": error.reason,
        "status": error.status,
        "httpStatus": error.http_status,
        "domain": body["domain"],
    }
    for key in ("metadata", "fieldViolations", "preconditionViolations", "retryAfterSeconds"):
        if body.get(key):
            extensions[key] = body[key]
    formatted: dict[str, Any] = {"message": error.message, "extensions": extensions}
    if located is not None:
        if located.locations:
            formatted["locations"] = [
                {"line": loc.line, "column": loc.column} for loc in located.locations
            ]
        if located.path is not None:
            formatted["path"] = list(located.path)
    return formatted


def _graphql_error(error: GraphQLError, code: str) -> dict[str, Any]:
    formatted: dict[str, Any] = dict(error.formatted)
    formatted["extensions"] = {"code": code, "status": "INVALID_ARGUMENT"}
    return formatted


def _field_error(error: GraphQLError) -> dict[str, Any]:
    original = error.original_error
    if isinstance(original, ApiError):
        return _api_error(original, error)
    if original is not None and error.path is not None and not isinstance(original, GraphQLError):
        # A resolver's fault: no internals to the client.
        _log.error("graphql resolver failed", exc_info=original)
        internal = ApiError(500, "INTERNAL", "internal error", "INTERNAL")
        return _api_error(internal, error)
    return _graphql_error(error, "BAD_USER_INPUT")
