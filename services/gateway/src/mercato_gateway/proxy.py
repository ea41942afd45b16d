"""The REST endpoint: route, authenticate, rate-limit, transcode, call the service, answer.

Order of work for a request, so that refusals cost as little as possible and never reach a
service: route (404/405) -> size and media type (413/415) -> bearer token (verified) ->
rate limit (429; keyed by the verified subject, else the client address, so floods of bad
tokens are limited too) -> access rule (401/403) -> body read (413) and transcoding (400) ->
the gRPC call with the route's deadline and the caller's token, address, request id and trace
context in metadata -> JSON (or the mapped error); a GET answer carries an ``ETag`` and answers
a matching ``If-None-Match`` with 304 (``conditional.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any
from urllib.parse import parse_qsl

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from mercato_common.client import create_channel
from mercato_common.identity import Audience, Identity
from mercato_common.tls import ClientTls
from mercato_gateway.auth import Authenticator, parse_basic
from mercato_gateway.conditional import entity_tag, none_match
from mercato_gateway.edge import CLIENT_KEY, REQUEST_ID_KEY, ROUTE_KEY, SUBJECT_KEY, header_map
from mercato_gateway.errors import ApiError, from_rpc_error
from mercato_gateway.ratelimit import Decision, RateLimiter
from mercato_gateway.routing import Route, Router
from mercato_gateway.transcode import (
    build_request,
    json_field_path,
    parse_json_body,
    render_response,
)

__all__ = [
    "Caller",
    "ClientAddress",
    "Gate",
    "GatewayEndpoint",
    "Upstreams",
    "check_length",
    "json_media",
    "media_type",
    "method_not_allowed",
    "read_body",
    "send_response",
    "unsupported_media",
]

_log = logging.getLogger("mercato_gateway.proxy")


class Upstreams:
    """One channel per upstream service, and a ready-made callable per route.

    Channels are created by :meth:`start`, inside the event loop that will use them (a
    ``grpc.aio`` channel belongs to the loop it was created in).
    """

    def __init__(
        self,
        targets: Mapping[str, str],
        routes: Sequence[Route],
        *,
        tls: ClientTls | None = None,
        max_message_bytes: int = 4 * 1024 * 1024,
    ) -> None:
        services: dict[str, set[str]] = {}
        for route in routes:
            if route.service_key not in targets:
                raise ValueError(f"no upstream target for {route.full_method}")
            services.setdefault(route.service_key, set()).add(
                route.method.containing_service.full_name
            )
        self.services = {key: sorted(names) for key, names in services.items()}
        self._targets = dict(targets)
        self._routes = list(routes)
        self._tls = tls
        self._max_message_bytes = max_message_bytes
        self.channels: dict[str, grpc.aio.Channel] = {}
        self._calls: dict[str, grpc.aio.UnaryUnaryMultiCallable[Any, Any]] = {}

    def call(self, route: Route) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        return self._calls[route.full_method]

    def channel(self, key: str) -> grpc.aio.Channel:
        return self.channels[key]

    async def health(self, timeout: float) -> dict[str, bool]:  # noqa: ASYNC109 - gRPC deadline
        """Whether each upstream's health service reports its services SERVING (asked at once)."""
        keys = list(self.services)
        results = await asyncio.gather(*(self._serving(key, timeout) for key in keys))
        return dict(zip(keys, results, strict=True))

    async def _serving(self, key: str, timeout: float) -> bool:  # noqa: ASYNC109 - gRPC deadline
        stub = health_pb2_grpc.HealthStub(self.channels[key])
        for name in self.services[key]:
            try:
                response = await stub.Check(
                    health_pb2.HealthCheckRequest(service=name), timeout=timeout
                )
            except grpc.aio.AioRpcError:
                return False
            if response.status != health_pb2.HealthCheckResponse.SERVING:
                return False
        return True

    async def start(self) -> None:
        self.channels = {
            key: create_channel(
                self._targets[key],
                services=names,
                tls=self._tls,
                max_message_bytes=self._max_message_bytes,
            )
            for key, names in self.services.items()
        }
        for route in self._routes:
            if route.full_method not in self._calls:
                self._calls[route.full_method] = self.channels[route.service_key].unary_unary(
                    route.grpc_path,
                    request_serializer=route.request_class.SerializeToString,
                    response_deserializer=route.response_class.FromString,
                )

    async def stop(self) -> None:
        channels, self.channels = self.channels, {}
        self._calls = {}
        for channel in channels.values():
            await channel.close(grace=1.0)


@dataclass(frozen=True, slots=True)
class ClientAddress:
    """Who is calling: the address for rate limits, and the chain forwarded to services."""

    address: str
    forwarded_for: str

    @classmethod
    def of(cls, peer: str, x_forwarded_for: str | None, trusted_hops: int) -> ClientAddress:
        if trusted_hops <= 0 or not x_forwarded_for:
            return cls(peer, peer)
        chain = [part.strip() for part in x_forwarded_for.split(",") if part.strip()]
        if len(chain) < trusted_hops:
            return cls(peer, peer)
        kept = chain[: len(chain) - trusted_hops + 1]
        return cls(kept[-1], ", ".join(kept))


@dataclass(frozen=True, slots=True)
class Deadlines:
    read: float
    write: float
    overrides: Mapping[str, float]

    def of(self, route: Route) -> float:
        override = self.overrides.get(route.full_method)
        if override is not None:
            return override
        return self.read if route.is_read else self.write


_JSON_TYPES = ("application/json",)
_FORM_TYPE = "application/x-www-form-urlencoded"


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";")[0].strip().lower()


def json_media(media: str) -> bool:
    return media in _JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


@dataclass(frozen=True, slots=True)
class Caller:
    """Who a request comes from, once admitted: the verified identity (None: no token), the
    token to forward, the client address and the request id."""

    identity: Identity | None
    token: str | None
    client: ClientAddress
    request_id: str | None

    @property
    def key(self) -> str:
        """Whom limits count: the verified subject, else the client address."""
        return f"sub:{self.identity.subject}" if self.identity else f"ip:{self.client.address}"


@dataclass(eq=False)
class Gate:
    """What every public endpoint (REST, GraphQL) does around a call, done once: admit the
    caller (bearer token verified, rate limit) and call an RPC with the caller's token,
    address, request id and the route's deadline, gRPC errors mapped to :class:`ApiError`."""

    upstreams: Upstreams
    authenticator: Authenticator
    limiter: RateLimiter | None
    _: KW_ONLY
    deadlines: Deadlines
    trusted_proxy_hops: int = 0

    def client(self, scope: Any, headers: Mapping[str, str]) -> ClientAddress:
        peer = (scope.get("client") or ("unknown", 0))[0]
        client = ClientAddress.of(peer, headers.get("x-forwarded-for"), self.trusted_proxy_hops)
        scope[CLIENT_KEY] = client.address
        return client

    async def admit(
        self,
        scope: Any,
        headers: Mapping[str, str],
        client: ClientAddress,
        *,
        rate_class: str,
        rate_headers: dict[str, str],
        bearer: bool = True,
    ) -> Caller:
        """The caller, verified, within its rate limit (keyed by the verified subject, else the
        client address, so floods of bad tokens are limited too); raises 429, or 401 for a bad
        token once the limit let it through."""
        identity: Identity | None = None
        auth_error: ApiError | None = None
        token = self.authenticator.bearer_token(headers.get("authorization")) if bearer else None
        if token is not None:
            try:
                identity = await self.authenticator.verify(token)
            except ApiError as error:
                auth_error = error
        if identity is not None:
            scope[SUBJECT_KEY] = identity.subject
        caller = Caller(identity, token, client, scope.get(REQUEST_ID_KEY))
        await self.limit(caller, rate_class, rate_headers)
        if auth_error is not None:
            raise auth_error
        return caller

    async def limit(self, caller: Caller, rate_class: str, rate_headers: dict[str, str]) -> None:
        """One decision of ``rate_class``'s bucket for ``caller``; 429 when it is empty."""
        if self.limiter is None:
            return
        decision = await self.limiter.check(rate_class, caller.key)
        rate_headers.update(decision.headers(self.limiter.window(rate_class)))
        if not decision.allowed:
            raise _limited(decision)

    async def call(self, route: Route, request: Any, caller: Caller) -> Any:
        """The RPC of ``route`` for ``caller``; a gRPC error as :class:`ApiError` naming the
        request's fields by their JSON names."""
        metadata: list[tuple[str, str]] = [("x-forwarded-for", caller.client.forwarded_for)]
        if caller.request_id:
            metadata.append(("x-request-id", caller.request_id))
        if caller.token is not None:
            metadata.append(("authorization", f"Bearer {caller.token}"))
        try:
            return await self.upstreams.call(route)(
                request, timeout=self.deadlines.of(route), metadata=metadata
            )
        except grpc.aio.AioRpcError as error:
            descriptor = route.request_descriptor
            raise from_rpc_error(
                error,
                service=route.service_key,
                field_path=lambda path: json_field_path(descriptor, path),
            ) from None


class GatewayEndpoint:
    """The ASGI app serving every derived route."""

    def __init__(self, router: Router, gate: Gate, *, max_body_bytes: int) -> None:
        self._router = router
        self._gate = gate
        self._auth = gate.authenticator
        self._max_body = max_body_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        request_id: str | None = scope.get(REQUEST_ID_KEY)
        raw = scope.get("raw_path")
        path = raw.decode("latin-1") if raw else scope["path"]
        path = path.split("?", 1)[0]
        match = self._router.match(scope["method"], path)
        if match is None:
            allowed = self._router.allowed_methods(path)
            if allowed:
                error = method_not_allowed(scope["method"], allowed)
            else:
                error = ApiError(404, "NOT_FOUND", "no such route", "ROUTE_NOT_FOUND")
            await self.refuse(send, error, request_id)
            return
        route = match.route
        scope[ROUTE_KEY] = route.template
        rate_headers: dict[str, str] = {}
        try:
            status, body, headers = await self._handle(
                scope, receive, route, match.path_params, rate_headers
            )
        except ApiError as error:
            error.headers = {**rate_headers, **error.headers}
            await _send_error(
                send,
                error,
                request_id,
                form=route.form_encoded,
                challenge=self._auth.challenge_for,
            )
            return
        await send_response(send, status, body, {**rate_headers, **headers})

    async def refuse(self, send: Any, error: ApiError, request_id: str | None) -> None:
        """Answer with ``error`` in the API's error body (not for the form-encoded routes)."""
        await _send_error(send, error, request_id, form=False, challenge=self._auth.challenge_for)

    async def _handle(
        self,
        scope: Any,
        receive: Any,
        route: Route,
        path_params: dict[str, str],
        rate_headers: dict[str, str],
    ) -> tuple[int, bytes, dict[str, str]]:
        headers = header_map(scope)
        client = self._gate.client(scope, headers)

        # Size and media type, from the headers alone.
        length_header = headers.get("content-length")
        has_body = bool(route.body) and (
            (length_header is not None and length_header.strip() != "0")
            or "transfer-encoding" in headers
        )
        check_length(length_header, self._max_body)
        media = media_type(headers.get("content-type"))
        if has_body and not route.raw_body:  # a raw body is passed on with its media type
            acceptable = media == _FORM_TYPE if route.form_encoded else json_media(media)
            if not acceptable:
                raise unsupported_media(_FORM_TYPE if route.form_encoded else "application/json")

        # Who calls (verified), then the rate limit, then the access rule.
        caller = await self._gate.admit(
            scope,
            headers,
            client,
            rate_class=route.rate_class,
            rate_headers=rate_headers,
            bearer=not route.form_encoded,
        )
        self._auth.authorize(route.access, caller.identity)

        # The request message.
        raw_body = await read_body(receive, self._max_body) if has_body else b""
        query = _query(scope)
        document: Any = None
        if route.raw_body:
            document = raw_body
        elif route.form_encoded:
            document = _form_document(route, raw_body, headers.get("authorization"))
            query = []
        elif raw_body:
            # A body that is there must be a JSON text: whitespace alone is 400 MALFORMED_JSON,
            # as the OpenAPI document says (only an absent body means "no fields").
            document = parse_json_body(raw_body, route)
        request = build_request(
            route,
            path_params=path_params,
            query=query,
            body=document,
            headers=headers,
            content_type=headers.get("content-type", ""),
        )

        # The call.
        response = await self._gate.call(route, request, caller)
        response_headers = {"content-type": "application/json"}
        if route.form_encoded:
            response_headers.update({"cache-control": "no-store", "pragma": "no-cache"})
        elif route.access.audience is Audience.PUBLIC and route.http_method == "GET":
            response_headers["cache-control"] = "public, max-age=60"
        else:
            response_headers["cache-control"] = "no-store"
        if route.http_method == "GET":
            # Conditional GET: the weak entity tag of what is served; a matching
            # If-None-Match gets 304 with the same validator and cache headers, no content.
            tag = entity_tag(response)
            response_headers["etag"] = tag
            if none_match(headers.get("if-none-match"), tag):
                del response_headers["content-type"]
                return 304, b"", response_headers
        return 200, render_response(route, response), response_headers


def check_length(length_header: str | None, limit: int) -> None:
    """413 for a declared body over ``limit`` bytes, 400 for a malformed Content-Length."""
    if length_header is None:
        return
    try:
        length = int(length_header)
    except ValueError:
        raise ApiError.bad_request("bad Content-Length") from None
    if length > limit:
        raise _too_large(limit)


def unsupported_media(wanted: str) -> ApiError:
    return ApiError(
        415,
        "INVALID_ARGUMENT",
        f"the request body must be {wanted}",
        "UNSUPPORTED_MEDIA_TYPE",
        headers={"accept": wanted},
    )


def _query(scope: Any) -> list[tuple[str, str]]:
    raw = scope.get("query_string", b"")
    if not raw:
        return []
    try:
        return parse_qsl(raw.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ApiError.bad_request("malformed query string") from None


def _form_document(route: Route, body: bytes, authorization: str | None) -> dict[str, str]:
    """RFC 6749 form parameters as a JSON document of the request (unknown ones ignored)."""
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        raise ApiError.bad_request("malformed form body") from None
    fields = {f.json_name: f for f in route.request_descriptor.fields}
    fields.update({f.name: f for f in route.request_descriptor.fields})
    document: dict[str, str] = {}
    for name, value in pairs:
        field = fields.get(name)
        if field is None:
            continue  # RFC 6749 section 3.2: unrecognized parameters are ignored
        if field.json_name in document:
            raise ApiError.bad_request(f"parameter {name} is repeated")
        document[field.json_name] = value
    basic = parse_basic(authorization) if authorization else None
    if basic is not None:
        if "client_secret" in document or (
            "client_id" in document and document["client_id"] != basic.client_id
        ):
            raise ApiError.bad_request("use one client authentication method, not two")
        if "client_id" in fields and "client_secret" in fields:
            document["client_id"] = basic.client_id
            document["client_secret"] = basic.client_secret
    return document


async def read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ApiError(499, "CANCELLED", "the client went away", "CLIENT_CLOSED")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def method_not_allowed(method: str, allowed: Sequence[str]) -> ApiError:
    return ApiError(
        405,
        "UNIMPLEMENTED",
        f"method {method} is not allowed here",
        "METHOD_NOT_ALLOWED",
        headers={"allow": ", ".join(allowed)},
    )


def _too_large(limit: int) -> ApiError:
    return ApiError(
        413,
        "INVALID_ARGUMENT",
        f"the request body exceeds {limit} bytes",
        "BODY_TOO_LARGE",
        metadata={"max_bytes": str(limit)},
    )


def _limited(decision: Decision) -> ApiError:
    if decision.source == "closed":
        return ApiError(
            503,
            "UNAVAILABLE",
            "rate limiting is unavailable",
            "RATE_LIMITER_UNAVAILABLE",
            retry_after=decision.retry_after,
        )
    return ApiError(
        429,
        "RESOURCE_EXHAUSTED",
        "too many requests; retry later",
        "RATE_LIMITED",
        metadata={"policy": decision.policy_name},
        retry_after=decision.retry_after,
    )


async def send_response(send: Any, status: int, body: bytes, headers: Mapping[str, str]) -> None:
    raw_headers = [
        (key.encode("latin-1"), value.encode("latin-1")) for key, value in headers.items()
    ]
    if status != 304:  # RFC 9110 section 8.6: a 304 has no content and no Content-Length
        raw_headers.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(
    send: Any,
    error: ApiError,
    request_id: str | None,
    *,
    form: bool,
    challenge: Callable[[str], str],
) -> None:
    headers = {"content-type": "application/json", "cache-control": "no-store"}
    status = error.http_status
    if form:
        body = json.dumps(error.oauth_body()).encode()
        headers["pragma"] = "no-cache"
        if status == 401:
            error.headers.setdefault("www-authenticate", 'Basic realm="mercato"')
    else:
        body = error.render(request_id)
        if status == 401:
            error.headers.setdefault("www-authenticate", challenge(error.reason))
    headers.update(error.all_headers())
    await send_response(send, status, body, headers)
