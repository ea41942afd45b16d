"""Telemetry for one process: traces (OpenTelemetry), metrics (Prometheus), JSON logs. Call
:func:`setup_telemetry` once from a service's ``app.py``. Traces propagate with W3C trace
context and are exported over OTLP/gRPC only when an endpoint is configured. The spans of the
PostgreSQL, MongoDB, Redis and Kafka clients come from OpenTelemetry's instrumentation packages,
turned on by :func:`instrument_client` where the kit creates each client, only in a process that
exports traces, with the stable database conventions (``db.system.name``, ``db.query.text``).
Exported spans carry an exception's type, never its message (:class:`ScrubbingSpanExporter`):
driver errors can quote values. Metrics are served on ``/metrics`` of their own port. Logs are
one JSON object per line on stdout with ``trace_id`` and ``span_id`` of the current span, the
service name and version; the field list is in docs/observability.md.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, make_server

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased
from opentelemetry.trace import Status
from prometheus_client import REGISTRY, CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer
from pythonjsonlogger.orjson import OrjsonFormatter

from mercato_common.redaction import REDACTED, is_secret_name, redact

__all__ = [
    "FIELD_NAMES",
    "BufferedStreamHandler",
    "JsonLogFormatter",
    "ProcessSettings",
    "ScrubbingSpanExporter",
    "Telemetry",
    "configure_logging",
    "instrument_client",
    "setup_telemetry",
    "telemetry_for",
    "trace_exemplar",
]

#: What the JSON line calls a LogRecord's attributes and the extras the code logs: the Elastic
#: Common Schema / OpenTelemetry names that ELK, OpenSearch and OTel pipelines index as they are.
FIELD_NAMES = {
    "asctime": "@timestamp",
    "levelname": "log.level",
    "name": "log.logger",
    "exc_info": "error.stack_trace",
    "service": "service.name",
    "version": "service.version",
    "dataset": "event.dataset",
    "trace_id": "trace.id",
    "span_id": "span.id",
    # The gRPC access log (mercato_common.interceptors).
    "rpc_method": "rpc.method",
    "grpc_code": "rpc.grpc.status",
    "peer": "network.peer.address",
    # The gateway's access log.
    "http_method": "http.request.method",
    "http_route": "http.route",
    "http_status": "http.response.status_code",
    "response_bytes": "http.response.body.size",
    "request_id": "http.request.id",
    "client_address": "client.address",
    "user_agent": "user_agent.original",
    "subject": "user.id",
    "user_id": "user.id",
}


class _TraceContextFilter(logging.Filter):
    """Stamps every record with the current span's ids and the process identity."""

    def __init__(self, service: str, version: str) -> None:
        super().__init__()
        self.service = service
        self.version = version
        self.dataset = f"mercato.{service}"

    def filter(self, record: logging.LogRecord) -> bool:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            record.trace_id = format(context.trace_id, "032x")
            record.span_id = format(context.span_id, "016x")
        record.service = self.service
        record.version = self.version
        # Access logs are a dataset of their own: one line per request, indexed apart.
        record.dataset = (
            f"{self.dataset}.access" if record.name.endswith(".access") else self.dataset
        )
        return True


class _RedactingFilter(logging.Filter):
    """Redacts a record in place before a handler that does not format it (the OTLP log
    export): its message, and its extras that are secrets or carry them."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), None
        for key, value in list(vars(record).items()):
            if key in _RECORD_ATTRIBUTES:
                continue
            if is_secret_name(key):
                setattr(record, key, REDACTED)
            elif isinstance(value, str):
                setattr(record, key, redact(value))
        return True


_RECORD_ATTRIBUTES = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


#: Fields the formatter and _TraceContextFilter write themselves, never from a caller's text.
_STAMPED_FIELDS = frozenset(
    FIELD_NAMES[name]
    for name in (
        "asctime",
        "levelname",
        "name",
        "service",
        "version",
        "dataset",
        "trace_id",
        "span_id",
    )
)


class JsonLogFormatter(OrjsonFormatter):
    """One JSON object per line, ECS / OpenTelemetry field names (FIELD_NAMES), secrets redacted:
    @timestamp (UTC, milliseconds), log.level, log.logger, message, service.name,
    service.version, event.dataset, trace.id / span.id, then the extras.

    Encoded with orjson: the gateway writes a line per request, and the standard library's
    encoder made a third of that line's cost.
    """

    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s", rename_fields=FIELD_NAMES
        )
        # The "YYYY-MM-DDTHH:MM:SS" of the last second formatted: lines come many a second.
        self._second = -1
        self._second_text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        second = int(record.created)
        if second != self._second:
            moment = datetime.datetime.fromtimestamp(second, datetime.UTC)
            self._second_text = moment.strftime("%Y-%m-%dT%H:%M:%S")
            self._second = second
        milliseconds = int((record.created - second) * 1000)
        return f"{self._second_text}.{milliseconds:03d}Z"

    def process_log_record(self, log_data: dict[str, Any]) -> dict[str, Any]:
        for key, value in log_data.items():
            if key in _STAMPED_FIELDS:
                continue
            if isinstance(value, str):
                log_data[key] = REDACTED if is_secret_name(key) else redact(value)
            elif value is not None and is_secret_name(key):
                log_data[key] = REDACTED
        return log_data


class BufferedStreamHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that writes its lines in batches: at most every ``flush_seconds``, when
    ``max_bytes`` are waiting, and at once for WARNING and above (nginx's ``access_log ...
    buffer= flush=``).

    A plain StreamHandler writes and flushes every record, one system call per access-log line
    (6 % of the gateway's CPU per request), and more so with ``PYTHONUNBUFFERED``, which the
    images set. Lines reach the stream about ``flush_seconds`` after they were buffered (a daemon
    thread flushes stragglers when no further record arrives) and at exit (``logging.shutdown``
    flushes every handler). The thread sleeps while no line waits: an idle service does not wake
    for its logs.
    """

    def __init__(
        self, stream: Any, *, flush_seconds: float = 1.0, max_bytes: int = 64 * 1024
    ) -> None:
        super().__init__(stream)
        self._flush_seconds = flush_seconds
        self._max_bytes = max_bytes
        self._lines: list[str] = []
        self._size = 0
        self._flushed_at = time.monotonic()
        # Not ``_closed``: logging.Handler.close sets that attribute to True.
        self._closing = threading.Event()
        # Set while lines wait in the buffer (under the handler's lock, with the buffer).
        self._waiting = threading.Event()
        self._thread = threading.Thread(target=self._flush_stragglers, daemon=True)
        self._thread.start()

    def emit(self, record: logging.LogRecord) -> None:
        # Called with the handler's lock held (Handler.handle), as flush takes it.
        try:
            line = self.format(record) + self.terminator
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line)
        if (
            record.levelno >= logging.WARNING
            or self._size >= self._max_bytes
            or time.monotonic() - self._flushed_at >= self._flush_seconds
        ):
            self.flush()
        else:
            self._waiting.set()

    def flush(self) -> None:
        with self.lock:  # type: ignore[union-attr]  # created by Handler.__init__
            self._flushed_at = time.monotonic()
            if self._lines:
                lines, self._lines, self._size = self._lines, [], 0
                self.stream.write("".join(lines))
            self._waiting.clear()
            super().flush()

    def close(self) -> None:
        self._closing.set()
        self._waiting.set()  # wakes the thread, which then ends
        self.flush()
        super().close()

    def _flush_stragglers(self) -> None:
        # Asleep until a line is buffered, then gives it flush_seconds for others to join it
        # (or for a later emit to flush them all) before it writes what still waits.
        while self._waiting.wait() and not self._closing.wait(self._flush_seconds):
            if self._waiting.is_set():
                self.flush()


def configure_logging(service: str, version: str, level: str = "INFO") -> None:
    """Route the root logger to stdout as JSON lines stamped with trace ids."""
    handler = BufferedStreamHandler(sys.stdout)
    handler.setFormatter(JsonLogFormatter())
    handler.addFilter(_TraceContextFilter(service, version))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
        if isinstance(existing, BufferedStreamHandler):
            existing.close()
    root.addHandler(handler)
    root.setLevel(level)
    # aiokafka and grpc are chatty at INFO about routine reconnects.
    logging.getLogger("aiokafka").setLevel(max(logging.WARNING, root.level))


@dataclass
class Telemetry:
    """What :func:`setup_telemetry` started; :meth:`shutdown` flushes and stops it."""

    tracer_provider: TracerProvider
    metrics_port: int | None
    _servers: list[Any] = field(default_factory=list)
    logger_provider: Any = None

    def shutdown(self) -> None:
        self.tracer_provider.shutdown()
        if self.logger_provider is not None:
            self.logger_provider.shutdown()
        for server, thread in self._servers:
            _stop_metrics_server(server, thread)


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes are not logged."""


def _start_metrics_server(
    port: int, host: str, registry: CollectorRegistry
) -> tuple[ThreadingWSGIServer, threading.Thread]:
    """``/metrics`` on ``host:port`` in a daemon thread, like prometheus_client's
    ``start_http_server`` except that the thread sleeps on its socket until a scrape comes
    (that one wakes twice a second to look for a shutdown request, idle or not);
    :func:`_stop_metrics_server` wakes it to stop."""
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = make_server(host, port, make_wsgi_app(registry), Server, handler_class=_QuietHandler)
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": None},
        name="metrics-http",
        daemon=True,
    )
    thread.start()
    return server, thread


def _stop_metrics_server(server: ThreadingWSGIServer, thread: threading.Thread) -> None:
    """Ask ``server`` to stop, then connect to it until its loop has seen the request (a
    connection is what wakes it), and close it."""
    stopper = threading.Thread(target=server.shutdown, name="metrics-http-stop", daemon=True)
    stopper.start()
    host, port = str(server.server_address[0]), int(server.server_address[1])
    if host in ("0.0.0.0", ""):  # noqa: S104 - an address to reach, not one to bind
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    deadline = time.monotonic() + 5.0
    while stopper.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            socket.create_connection((host, port), timeout=0.5).close()
        stopper.join(0.05)
    server.server_close()
    thread.join(timeout=5)


_exporting = False


def _instrumentor(library: str) -> Any:
    """OpenTelemetry's instrumentor of a client library, imported only when used."""
    if library == "asyncpg":
        from opentelemetry.instrumentation.asyncpg import AsyncPGInstrumentor

        return AsyncPGInstrumentor()  # type: ignore[no-untyped-call]
    if library == "pymongo":
        from opentelemetry.instrumentation.pymongo import PymongoInstrumentor

        return PymongoInstrumentor()
    if library == "redis":
        from opentelemetry.instrumentation.redis import RedisInstrumentor

        return RedisInstrumentor()
    if library == "aiokafka":
        from opentelemetry.instrumentation.aiokafka import AIOKafkaInstrumentor

        return AIOKafkaInstrumentor()
    raise ValueError(f"no instrumentation for {library!r}")


def instrument_client(library: str) -> None:
    """Spans for every call of ``library`` (asyncpg, pymongo, redis, aiokafka), from
    OpenTelemetry's instrumentation, if this process exports traces. Called where the kit creates
    the client and before it does: PyMongo's instrumentation only sees clients created after it."""
    if not _exporting:
        return
    instrumentor = _instrumentor(library)
    if not instrumentor.is_instrumented_by_opentelemetry:
        instrumentor.instrument()


class ScrubbingSpanExporter(SpanExporter):
    """Exports spans with their exception events and error status reduced to the exception
    type.

    Instrumentations record an exception's message and stack trace; a driver's message can
    quote the values of a statement (an email, a token). The type is what tracing needs."""

    _KEEP = frozenset({"exception.type", "exception.escaped"})

    def __init__(self, inner: SpanExporter) -> None:
        self._inner = inner

    def export(self, spans: Any) -> SpanExportResult:
        return self._inner.export([self._scrubbed(span) for span in spans])

    def _scrubbed(self, span: ReadableSpan) -> ReadableSpan:
        status = span.status
        # The SDK's own status on an exception reads "<Type>: <message>".
        described = status.description is not None and ": " in status.description
        if not described and not any(event.name == "exception" for event in span.events):
            return span
        if described:
            status = Status(status.status_code, (status.description or "").split(": ", 1)[0])
        events = [
            Event(
                event.name,
                {k: v for k, v in (event.attributes or {}).items() if k in self._KEEP},
                event.timestamp,
            )
            if event.name == "exception"
            else event
            for event in span.events
        ]
        return ReadableSpan(
            name=span.name,
            context=span.context,
            parent=span.parent,
            resource=span.resource,
            attributes=span.attributes,
            events=events,
            links=span.links,
            kind=span.kind,
            status=status,
            start_time=span.start_time,
            end_time=span.end_time,
            instrumentation_scope=span.instrumentation_scope,
        )

    def shutdown(self) -> None:
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self._inner.force_flush(timeout_millis)


def trace_exemplar(span: trace.Span) -> dict[str, str] | None:
    """The exemplar of a latency observation made under ``span``: its trace id when the trace is
    sampled (exported), so a histogram bucket in Prometheus links to a trace in the tracing
    backend; None otherwise. Exposed in the OpenMetrics format Prometheus asks for."""
    context = span.get_span_context()
    if not context.trace_flags.sampled:
        return None
    return {"trace_id": format(context.trace_id, "032x")}


def setup_telemetry(
    *,
    service: str,
    version: str,
    log_level: str = "INFO",
    otlp_endpoint: str | None = None,
    metrics_port: int | None = None,
    metrics_host: str = "127.0.0.1",
    registry: CollectorRegistry | None = None,
    span_exporter: SpanExporter | None = None,
    logs_exporter: str = "none",
    log_record_exporter: Any = None,
) -> Telemetry:
    """Configure logs, the global tracer provider and the metrics endpoint of this process.

    ``metrics_port`` 0 picks a free port (tests); None serves no endpoint.
    ``span_exporter`` overrides the OTLP exporter (tests use an in-memory one).
    ``logs_exporter`` "otlp" also exports every log record over OTLP to ``otlp_endpoint`` (or
    to ``log_record_exporter``, tests), after the same redaction as the JSON lines.
    """
    configure_logging(service, version, log_level)
    resource = Resource.create({"service.name": service, "service.version": version})
    if span_exporter is None and otlp_endpoint:
        # Imported lazily: the exporter pulls in grpc channels only when used.
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter(endpoint=otlp_endpoint)
    global _exporting
    _exporting = span_exporter is not None
    # Spans nobody exports are not recorded: a process that starts a trace then only makes ids
    # (the trace.id and span.id of its log lines, the traceparent it sends on), and one that
    # continues a sampled trace still records it, so the next hop's decision stays the caller's.
    provider = TracerProvider(
        resource=resource, sampler=None if _exporting else ParentBased(root=ALWAYS_OFF)
    )
    if span_exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(ScrubbingSpanExporter(span_exporter)))
        # Before any instrumentor reads it: the stable database attribute names.
        os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "database")
    trace.set_tracer_provider(provider)
    telemetry = Telemetry(tracer_provider=provider, metrics_port=None)
    if logs_exporter == "otlp" and (otlp_endpoint or log_record_exporter is not None):
        telemetry.logger_provider = _export_logs(
            resource, log_record_exporter, otlp_endpoint, log_level
        )
    if metrics_port is not None:
        server, thread = _start_metrics_server(
            metrics_port, metrics_host, REGISTRY if registry is None else registry
        )
        telemetry.metrics_port = server.server_port
        telemetry._servers.append((server, thread))
    return telemetry


def _export_logs(
    resource: Resource, exporter: Any, otlp_endpoint: str | None, log_level: str
) -> Any:
    """A handler on the root logger that exports records over OTLP, redacted; its provider."""
    # Imported lazily: only processes that export their logs pay for the SDK's log parts.
    from opentelemetry.instrumentation.logging.handler import LoggingHandler
    from opentelemetry.sdk._logs import LoggerProvider
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        exporter = OTLPLogExporter(endpoint=otlp_endpoint)
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(exporter))
    handler = LoggingHandler(
        level=logging.getLevelNamesMapping()[log_level], logger_provider=logger_provider
    )
    handler.addFilter(_RedactingFilter())
    logging.getLogger().addHandler(handler)
    return logger_provider


class ProcessSettings(Protocol):
    """The settings every process has that say how it reports (services and the gateway)."""

    @property
    def service_name(self) -> str: ...
    @property
    def service_version(self) -> str: ...
    @property
    def log_level(self) -> str: ...
    @property
    def otlp_endpoint(self) -> str | None: ...
    @property
    def logs_exporter(self) -> str: ...
    @property
    def metrics_port(self) -> int: ...
    @property
    def metrics_host(self) -> str: ...


def telemetry_for(
    settings: ProcessSettings,
    *,
    serve_metrics: bool = True,
    registry: CollectorRegistry | None = None,
) -> Telemetry:
    """:func:`setup_telemetry` from a process's settings; ``serve_metrics`` False serves no
    metrics endpoint (a worker whose supervisor serves them)."""
    return setup_telemetry(
        service=settings.service_name,
        version=settings.service_version,
        log_level=settings.log_level,
        otlp_endpoint=settings.otlp_endpoint,
        logs_exporter=settings.logs_exporter,
        metrics_port=settings.metrics_port if serve_metrics else None,
        metrics_host=settings.metrics_host,
        registry=registry,
    )
