"""``POST /graphql``: one GraphQL operation per request over the schema of ``graph_schema``.

The request is a JSON object ``{"query", "variables", "operationName"}``
(GraphQL over HTTP, ``application/json``). The same gate as REST admits it once per request:
the bearer token verified (a bad one is a 401 for the whole request), then the rate limit
(429); each root field then checks its RPC's access rule (a missing identity or scope is an
error of that field, ``UNAUTHENTICATED`` / ``PERMISSION_DENIED``) and calls the service with
the caller's token, address and request id, within the route's deadline.

Answers: 200 with ``{"data", "errors"}`` once the operation ran (field errors included); 400 with
``{"errors"}`` for a request that is not GraphQL (bad JSON, a syntax error, a document the schema
refuses), and the gate's refusals with their HTTP status. Every error carries
``extensions.code`` (the REST error's ``reason``) and ``extensions.status``; errors of services
add ``domain``, ``metadata``, ``fieldViolations`` (JSON names of the RPC's request fields, which
are the root field's arguments) and ``preconditionViolations`` as the REST error body has them.
Messages of server faults are generic, as in REST.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format
from graphql import (
    ExecutionResult,
    GraphQLError,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
    execute,
    parse,
    validate,
)

from mercato_gateway.edge import ROUTE_KEY, header_map
from mercato_gateway.errors import ApiError
from mercato_gateway.graph_schema import build_schema
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

__all__ = ["GRAPHQL_PATH", "GraphEndpoint"]

GRAPHQL_PATH = "/graphql"
#: The rate-limit class of a GraphQL request (one decision per request).
RATE_CLASS = "default"

_log = logging.getLogger("mercato_gateway.graphql")


@dataclass(frozen=True, slots=True)
class _Context:
    caller: Caller


class GraphEndpoint:
    """The ASGI app of ``POST /graphql``."""

    def __init__(self, routes: list[Route], gate: Gate, *, max_body_bytes: int) -> None:
        self._gate = gate
        self._max_body = max_body_bytes
        self.schema: GraphQLSchema = build_schema(routes, self._resolve)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        scope[ROUTE_KEY] = GRAPHQL_PATH
        rate_headers: dict[str, str] = {}
        try:
            status, body = await self._handle(scope, receive, rate_headers)
        except ApiError as error:
            status, body = error.http_status, {"errors": [_api_error(error)]}
            rate_headers = {**rate_headers, **error.all_headers()}
            if status == 401:
                rate_headers.setdefault(
                    "www-authenticate", self._gate.auth.challenge_for(error.reason)
                )
        headers = {
            "content-type": "application/json",
            "cache-control": "no-store",
            **rate_headers,
        }
        payload = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        await send_response(send, status, payload, headers)

    async def _handle(
        self, scope: Any, receive: Any, rate_headers: dict[str, str]
    ) -> tuple[int, dict[str, Any]]:
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
        query, variables, operation_name = _graphql_request(
            await read_body(receive, self._max_body)
        )
        try:
            document = parse(query)
        except GraphQLError as error:
            return 400, {"errors": [_graphql_error(error, "GRAPHQL_PARSE_FAILED")]}
        refused = validate(self.schema, document)
        if refused:
            return 400, {
                "errors": [_graphql_error(error, "GRAPHQL_VALIDATION_FAILED") for error in refused]
            }
        operations = [
            node
            for node in document.definitions
            if isinstance(node, OperationDefinitionNode)
            and (operation_name is None or (node.name and node.name.value == operation_name))
        ]
        if operations and operations[0].operation is OperationType.SUBSCRIPTION:
            raise ApiError.bad_request("subscriptions are not served over POST")
        result = execute(
            self.schema,
            document,
            context_value=_Context(caller),
            variable_values=variables,
            operation_name=operation_name,
        )
        if not isinstance(result, ExecutionResult):
            result = await result
        body: dict[str, Any] = {"data": result.data}
        if result.errors:
            body["errors"] = [_field_error(error) for error in result.errors]
        if result.data is None and all(error.path is None for error in result.errors or ()):
            # Nothing ran: the variables or the operation name did not fit the document.
            return 400, body
        return 200, body

    async def _resolve(self, route: Route, arguments: dict[str, Any], info: Any) -> dict[str, Any]:
        caller: Caller = info.context.caller
        self._gate.auth.authorize(route.access, caller.identity)
        request = route.request_class()
        parse_message(arguments, request)
        response = await self._gate.call(route, request, caller)
        document: dict[str, Any] = json_format.MessageToDict(
            response, always_print_fields_with_no_presence=True
        )
        return document


def _graphql_request(raw: bytes) -> tuple[str, dict[str, Any] | None, str | None]:
    try:
        document = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ApiError.bad_request("the request body is not JSON") from None
    if not isinstance(document, dict):
        raise ApiError.bad_request("the request body must be a JSON object")
    query, variables = document.get("query"), document.get("variables")
    operation_name = document.get("operationName")
    if not isinstance(query, str) or not query.strip():
        raise ApiError.bad_request("query: a GraphQL document is required")
    if variables is not None and not isinstance(variables, dict):
        raise ApiError.bad_request("variables: must be an object")
    if operation_name is not None and not isinstance(operation_name, str):
        raise ApiError.bad_request("operationName: must be a string")
    return query, variables, operation_name


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
