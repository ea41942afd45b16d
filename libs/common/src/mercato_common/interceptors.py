"""Server interceptors every mercato gRPC server runs, outermost first:

1. :class:`TelemetryInterceptor`: a SERVER span (parent from the caller's W3C
   trace context), RED metrics, the incoming deadline for outgoing calls, and
   one JSON access-log line per call.
2. :class:`ErrorInterceptor`: domain errors become ``google.rpc.Status`` with
   details; anything unexpected is logged with its trace id and becomes
   INTERNAL with a generic message.
3. :class:`IdentityInterceptor`: verifies the bearer token (if any) and
   enforces the method's ``(mercato.api.v1.access)`` option.
4. :class:`ValidationInterceptor`: protovalidate rules of the request message.

Every kind of handler is wrapped: unary calls through :meth:`around`, calls that stream
responses, requests or both through :meth:`around_stream`, with the same checks: the token and
the access option before the first message, each streamed request validated as it arrives,
errors raised while streaming mapped like a unary call's, one span, metric and access-log line
for the whole stream. Health's Watch (an infrastructure service) is public like its Check.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

from mercato_common.errors import FieldViolation, InvalidArgument, MercatoError, Unauthenticated
from mercato_common.grpc_types import ServicerContext as Context
from mercato_common.identity import (
    TokenVerifier,
    access_policy,
    check_access,
    reset_identity,
    set_identity,
)
from mercato_common.rpc_errors import to_grpc_status
from mercato_common.telemetry import trace_exemplar

__all__ = [
    "ErrorInterceptor",
    "GrpcServerMetrics",
    "IdentityInterceptor",
    "TelemetryInterceptor",
    "ValidationInterceptor",
    "incoming_deadline",
]

_log = logging.getLogger("mercato.grpc")
_access_log = logging.getLogger("mercato.access")

# Infrastructure services answer anyone and carry no access option.
PUBLIC_INFRA_SERVICES = frozenset(
    {
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
        "grpc.reflection.v1.ServerReflection",
    }
)

# Monotonic time by which the call being served must finish; outgoing calls
# made while serving it get no more than what is left (deadline propagation).
_incoming_deadline: ContextVar[float | None] = ContextVar("mercato_deadline", default=None)


def incoming_deadline() -> float | None:
    return _incoming_deadline.get()


if TYPE_CHECKING:
    import protovalidate

    # the stubs' generics do not exist at run time
    Handler: TypeAlias = grpc.RpcMethodHandler[Any, Any]


# Runs the rest of the chain (and the handler) for the call being wrapped.
Proceed = Callable[[], Awaitable[Any]]
# The same for a call that streams: the responses, as they come.
Responses = Callable[[], AsyncIterator[Any]]


def _split(method: str) -> tuple[str, str]:
    service, _, name = method.lstrip("/").partition("/")
    return service, name


class _WrappingInterceptor(grpc.aio.ServerInterceptor):
    """Wraps every handler: unary calls with :meth:`around`, streaming ones with
    :meth:`around_stream` (and their request streams with :meth:`requests`)."""

    async def around(self, method: str, request: Any, context: Context, proceed: Proceed) -> Any:
        raise NotImplementedError

    def around_stream(
        self, method: str, request: Any, context: Context, responses: Responses
    ) -> AsyncIterator[Any]:
        """The responses of a streaming call; ``request`` is None when the requests stream."""
        raise NotImplementedError

    def requests(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        """A streaming call's requests as the handler receives them."""
        return requests

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        method = handler_call_details.method
        # An aio server's behaviours take the aio context (the stubs say sync).
        serializers = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            inner: Any = handler.unary_unary

            async def unary_unary(request: Any, context: Context) -> Any:
                return await self.around(method, request, context, lambda: inner(request, context))

            return grpc.unary_unary_rpc_method_handler(unary_unary, **serializers)
        if handler.unary_stream is not None:
            streamer: Any = handler.unary_stream

            async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                def responses() -> AsyncIterator[Any]:
                    return _responses(streamer(request, context))

                async for response in self.around_stream(method, request, context, responses):
                    yield response

            return grpc.unary_stream_rpc_method_handler(unary_stream, **serializers)
        if handler.stream_stream is not None:
            duplex: Any = handler.stream_stream

            async def stream_stream(requests: Any, context: Context) -> AsyncIterator[Any]:
                def responses() -> AsyncIterator[Any]:
                    return _responses(duplex(self.requests(requests), context))

                async for response in self.around_stream(method, None, context, responses):
                    yield response

            return grpc.stream_stream_rpc_method_handler(stream_stream, **serializers)
        if handler.stream_unary is not None:
            collector: Any = handler.stream_unary

            async def stream_unary(requests: Any, context: Context) -> Any:
                async def one() -> AsyncIterator[Any]:
                    yield await collector(self.requests(requests), context)

                answers = [r async for r in self.around_stream(method, None, context, one)]
                return answers[0] if answers else None

            return grpc.stream_unary_rpc_method_handler(stream_unary, **serializers)
        return handler


class _ScopedInterceptor(_WrappingInterceptor):
    """An interceptor whose work surrounds the whole call, unary or streaming: :meth:`scope`."""

    def scope(self, method: str, context: Context) -> AbstractAsyncContextManager[None]:
        raise NotImplementedError

    async def around(self, method: str, request: Any, context: Context, proceed: Proceed) -> Any:
        async with self.scope(method, context):
            return await proceed()
        raise AssertionError("unreachable: the scope re-raises or aborts")  # pragma: no cover

    async def around_stream(
        self, method: str, request: Any, context: Context, responses: Responses
    ) -> AsyncIterator[Any]:
        async with self.scope(method, context):
            async for response in responses():
                yield response


async def _responses(result: Any) -> AsyncIterator[Any]:
    """A streaming handler's responses: an async generator's items, or none when the handler
    writes them itself (``context.write``) and returns."""
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    else:
        await result


class GrpcServerMetrics:
    """RED metrics of a gRPC server, named as in go-grpc-prometheus so dashboards carry over."""

    # Seconds. Measured (bench/results): catalog cache hits take 0.3-1 ms, reads 1-10 ms,
    # CreateOrder 100-500 ms under load; deadlines are a few seconds.
    BUCKETS = (
        0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    )  # fmt: skip

    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.started = Counter(
            "grpc_server_started_total",
            "RPCs started on the server.",
            ["grpc_service", "grpc_method"],
            registry=registry,
        )
        self.handled = Counter(
            "grpc_server_handled_total",
            "RPCs completed on the server, by status code.",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.duration = Histogram(
            "grpc_server_handling_seconds",
            "Time to handle an RPC on the server, until its status is known.",
            ["grpc_service", "grpc_method"],
            buckets=self.BUCKETS,
            registry=registry,
        )


class TelemetryInterceptor(_ScopedInterceptor):
    def __init__(self, metrics: GrpcServerMetrics) -> None:
        self._metrics = metrics
        self._tracer = trace.get_tracer("mercato_common.grpc")

    @asynccontextmanager
    async def scope(self, method: str, context: Context) -> AsyncIterator[None]:
        """A SERVER span, the RED metrics, the deadline and the access-log line of one call."""
        service, name = _split(method)
        metadata = context.invocation_metadata() or ()
        carrier = {key: value for key, value in metadata if isinstance(value, str)}
        parent = propagate.extract(carrier)
        remaining = context.time_remaining()
        deadline_token = _incoming_deadline.set(
            time.monotonic() + remaining if remaining is not None else None
        )
        self._metrics.started.labels(service, name).inc()
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        with self._tracer.start_as_current_span(
            f"{service}/{name}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            record_exception=False,
            set_status_on_exception=False,
        ) as span:
            try:
                yield
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except (GeneratorExit, asyncio.CancelledError):
                code = grpc.StatusCode.CANCELLED  # the caller went away mid-call or mid-stream
                raise
            except BaseException:
                code = grpc.StatusCode.UNKNOWN
                raise
            finally:
                elapsed = time.perf_counter() - started
                _incoming_deadline.reset(deadline_token)
                span.set_attribute("rpc.grpc.status_code", code.value[0])
                if code in _SERVER_FAULTS:
                    span.set_status(Status(StatusCode.ERROR, code.name))
                self._metrics.handled.labels(service, name, code.name).inc()
                self._metrics.duration.labels(service, name).observe(elapsed, trace_exemplar(span))
                _access_log.info(
                    "rpc",
                    extra={
                        "rpc_method": method,
                        "grpc_code": code.name,
                        "duration_ms": round(elapsed * 1000, 3),
                        "peer": context.peer(),
                    },
                )


# Codes that mean the server failed, not the caller (OpenTelemetry gRPC conventions).
_SERVER_FAULTS = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class ErrorInterceptor(_ScopedInterceptor):
    """Domain errors → rich status; unexpected exceptions → logged INTERNAL."""

    def __init__(self, domain: str) -> None:
        self._domain = domain

    @asynccontextmanager
    async def scope(self, method: str, context: Context) -> AsyncIterator[None]:
        try:
            yield
        except grpc.aio.AbortError:
            raise
        except MercatoError as error:
            if error.error_domain == MercatoError.domain:
                error.error_domain = self._domain
            await _abort(context, error)
        except Exception:
            # The trace id is on the log line (telemetry filter); the caller
            # gets no internals, only the code and a generic message.
            _log.exception("unexpected error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, "internal error")


async def _abort(context: Context, error: MercatoError) -> None:
    await context.abort_with_status(to_grpc_status(error))


class IdentityInterceptor(_ScopedInterceptor):
    """Verifies ``authorization: Bearer`` and enforces the method's access option."""

    def __init__(self, verifier: TokenVerifier | None) -> None:
        self._verifier = verifier

    @asynccontextmanager
    async def scope(self, method: str, context: Context) -> AsyncIterator[None]:
        """Checked before the handler runs; the caller's identity bound while it runs."""
        service, _ = _split(method)
        if service in PUBLIC_INFRA_SERVICES:
            yield
            return
        token = _bearer_token(context)
        identity = None
        if token is not None:
            if self._verifier is None:
                raise Unauthenticated("tokens are not accepted here", reason="TOKEN_INVALID")
            identity = await self._verifier.verify(token)
        check_access(access_policy(method), identity)
        token_binding = set_identity(identity)
        try:
            yield
        finally:
            reset_identity(token_binding)


def _bearer_token(context: Context) -> str | None:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
            raise Unauthenticated("authorization must be a Bearer token", reason="TOKEN_INVALID")
    return None


class ValidationInterceptor(_WrappingInterceptor):
    """Enforces the request's protovalidate rules and refuses NUL in any string; names every
    bad field."""

    def __init__(self, validator: protovalidate.Validator | None = None) -> None:
        # Imported here: the rules engine costs about 10 MiB, and only gRPC servers validate
        # (a client of this module, such as the gateway, never loads it).
        import protovalidate

        self._validator = validator or protovalidate.Validator()
        self._evaluation_error = protovalidate.EvaluationError

    async def around(self, method: str, request: Any, context: Context, proceed: Proceed) -> Any:
        self._check(request)
        return await proceed()

    async def around_stream(
        self, method: str, request: Any, context: Context, responses: Responses
    ) -> AsyncIterator[Any]:
        self._check(request)
        async for response in responses():
            yield response

    async def requests(self, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
        async for request in requests:
            self._check(request)
            yield request

    def _check(self, request: Any) -> None:
        if not isinstance(request, Message):
            return
        try:
            violations = self._validator.collect_violations(request)
        except self._evaluation_error:
            # A rule could not be evaluated on these values (e.g. a duration overflow from
            # extreme timestamps): the input is out of range, not a server fault.
            raise InvalidArgument(
                "the request has values outside the range its rules can check",
                reason="INVALID_REQUEST",
            ) from None
        bad = [_field_violation(v) for v in violations]
        named = {violation.field for violation in bad}
        bad += [
            FieldViolation(path, "must not contain the NUL character (U+0000)")
            for path in nul_fields(request)
            if path not in named
        ]
        if bad:
            raise InvalidArgument(
                "the request is invalid", reason="INVALID_REQUEST", field_violations=bad
            )


def nul_fields(message: Message, prefix: str = "") -> Iterator[str]:
    """Paths of the string fields of ``message`` holding U+0000, which no store here can keep
    (PostgreSQL text and jsonb refuse it, and so FerretDB): refused as bad input, never stored
    or answered with INTERNAL."""
    for field, value in message.ListFields():
        path = f"{prefix}{field.name}"
        if field.type == FieldDescriptor.TYPE_STRING:
            values = value if field.is_repeated else [value]
            for index, text in enumerate(values):
                if "\x00" in text:
                    yield f"{path}[{index}]" if field.is_repeated else path
        elif field.type == FieldDescriptor.TYPE_MESSAGE:
            entry = field.message_type
            if entry is not None and entry.GetOptions().map_entry:
                for key, item in value.items():
                    if isinstance(key, str) and "\x00" in key:
                        yield f"{path}[{key!r}]"
                    if isinstance(item, str) and "\x00" in item:
                        yield f"{path}[{key!r}]"
                    elif isinstance(item, Message):
                        yield from nul_fields(item, f"{path}[{key!r}].")
            elif field.is_repeated:
                for index, item in enumerate(value):
                    yield from nul_fields(item, f"{path}[{index}].")
            else:
                yield from nul_fields(value, f"{path}.")


def _field_violation(violation: protovalidate.Violation) -> FieldViolation:
    """``lines[2].quantity`` from protovalidate's structured field path."""
    proto = violation.proto
    parts: list[str] = []
    for element in proto.field.elements if proto.field is not None else ():
        name = element.field_name
        if element.subscript is not None:
            key = element.subscript.value
            name = f"{name}[{key!r}]" if isinstance(key, str) else f"{name}[{key}]"
        parts.append(name)
    return FieldViolation(".".join(parts), proto.message or proto.rule_id)


def default_interceptors(
    *, domain: str, verifier: TokenVerifier | None, metrics: GrpcServerMetrics
) -> list[grpc.aio.ServerInterceptor]:
    """The standard chain, outermost first."""
    return [
        TelemetryInterceptor(metrics),
        ErrorInterceptor(domain),
        IdentityInterceptor(verifier),
        ValidationInterceptor(),
    ]
