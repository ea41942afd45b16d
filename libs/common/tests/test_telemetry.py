import io
import json
import logging
import re
import time
import urllib.request

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client import CollectorRegistry, Counter

from mercato_common.telemetry import (
    BufferedStreamHandler,
    JsonLogFormatter,
    ScrubbingSpanExporter,
    _TraceContextFilter,
    setup_telemetry,
)


def _format(record: logging.LogRecord) -> dict[str, object]:
    _TraceContextFilter("catalog", "1.2.3").filter(record)
    return json.loads(JsonLogFormatter().format(record))


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("mercato.test", logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    return record


def test_log_line_is_one_json_object_with_ecs_names_and_extras() -> None:
    line = _format(_record("stock reserved", order_id="o-1"))
    assert line["message"] == "stock reserved"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(line["@timestamp"]))
    assert line["log.level"] == "INFO"
    assert line["log.logger"] == "mercato.test"
    assert line["service.name"] == "catalog"
    assert line["service.version"] == "1.2.3"
    assert line["event.dataset"] == "mercato.catalog"
    assert line["order_id"] == "o-1"
    assert "trace.id" not in line


def test_access_log_lines_use_semantic_convention_names_and_their_own_dataset() -> None:
    record = _record(
        "http",
        http_method="GET",
        http_route="/v1/products/{sku}",
        http_status=200,
        client_address="10.0.0.7",
        subject="user-1",
    )
    record.name = "mercato.gateway.access"
    line = _format(record)
    assert line["event.dataset"] == "mercato.catalog.access"
    assert line["http.request.method"] == "GET"
    assert line["http.route"] == "/v1/products/{sku}"
    assert line["http.response.status_code"] == 200
    assert line["client.address"] == "10.0.0.7"
    assert line["user.id"] == "user-1"


def test_secrets_never_reach_a_log_line() -> None:
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVz"
    line = _format(
        _record(
            f"refused Bearer {jwt} from postgresql://mercato:s3cr3t-pw@db:5432/orders",
            password="hunter2-password",
            client_secret="very-secret-value",
            refresh_token="rt-abcdef-123456",
            refresh_tokens=42,
            detail=f"token={jwt}",
        )
    )
    text = json.dumps(line)
    for secret in (jwt, "s3cr3t-pw", "hunter2-password", "very-secret-value", "rt-abcdef-123456"):
        assert secret not in text
    assert line["password"] == line["client_secret"] == line["refresh_token"] == "[REDACTED]"
    assert line["refresh_tokens"] == 42, "a count named after tokens is no secret"
    assert "postgresql://mercato:[REDACTED]@db:5432/orders" in str(line["message"])


def test_log_line_carries_the_current_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("op") as span:
        line = _format(_record("inside a span"))
        context = span.get_span_context()
    assert line["trace.id"] == format(context.trace_id, "032x")
    assert line["span.id"] == format(context.span_id, "016x")


def test_metrics_endpoint_serves_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    registry = CollectorRegistry()
    Counter("mercato_test_events_total", "test", registry=registry).inc(3)
    telemetry = setup_telemetry(
        service="test", version="0", metrics_port=0, metrics_host="127.0.0.1", registry=registry
    )
    try:
        assert telemetry.metrics_port
        url = f"http://127.0.0.1:{telemetry.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            body = response.read().decode()
        assert "mercato_test_events_total 3.0" in body
    finally:
        telemetry.shutdown()
        logging.getLogger().handlers.clear()


class _CountingStream(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
def test_buffered_handler_flushes_warnings_at_once_and_info_lines_within_the_interval() -> None:
    stream = _CountingStream()
    handler = BufferedStreamHandler(stream, flush_seconds=0.2)
    handler.setFormatter(JsonLogFormatter())
    try:
        for n in range(50):
            handler.handle(_record(f"access {n}"))
        assert stream.getvalue() == ""  # 50 lines waiting: one write later instead of 50
        assert stream.flushes == 0

        warning = _record("redis failed")
        warning.levelno = logging.WARNING
        handler.handle(warning)
        assert stream.flushes == 1
        lines = stream.getvalue().splitlines()
        assert len(lines) == 51
        assert [json.loads(line)["message"] for line in lines[:2]] == ["access 0", "access 1"]

        handler.handle(_record("straggler"))
        deadline = time.monotonic() + 5
        while stream.flushes < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert stream.flushes == 2  # flushed by the handler's own timer, no further record
        assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "straggler"
        # Nothing waits: the thread sleeps without a timeout until the next buffered line.
        assert not handler._waiting.is_set()
        time.sleep(0.5)
        assert stream.flushes == 2
        handler.handle(_record("after a quiet while"))  # the last flush is old: written at once
        assert stream.flushes == 3
        handler.handle(_record("last"))
        assert handler._waiting.is_set()  # buffered: the thread is awake for it
    finally:
        handler.close()
    assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "last"  # close flushes
    handler._thread.join(timeout=5)  # close wakes the thread, which ends (without an error)
    assert not handler._thread.is_alive()


def test_logs_exported_over_otlp_are_redacted(monkeypatch: pytest.MonkeyPatch) -> None:
    from opentelemetry.sdk._logs.export import InMemoryLogRecordExporter

    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    exporter = InMemoryLogRecordExporter()
    telemetry = setup_telemetry(
        service="orders", version="1", logs_exporter="otlp", log_record_exporter=exporter
    )
    jwt = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLWJ5dGVz"
    try:
        logging.getLogger("mercato.test").warning(
            "refused %s", f"Bearer {jwt}", extra={"password": "hunter2-password", "order_id": "o-9"}
        )
    finally:
        telemetry.shutdown()
        logging.getLogger().handlers.clear()
    (exported,) = [r.log_record for r in exporter.get_finished_logs()]
    assert exported.body == "refused Bearer [REDACTED]"
    attributes = dict(exported.attributes or {})
    assert attributes["password"] == "[REDACTED]"
    assert attributes["order_id"] == "o-9"
    assert "hunter2" not in str(attributes)


def test_exported_spans_keep_an_exception_type_but_not_its_message() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(ScrubbingSpanExporter(exporter)))
    tracer = provider.get_tracer("t")
    with pytest.raises(ValueError, match="hunter2"), tracer.start_as_current_span("failing"):
        raise ValueError("invalid input syntax for type uuid: 'hunter2@example.com'")
    with tracer.start_as_current_span("fine") as span:
        span.add_event("retry", {"attempt": 2})
    failing, fine = exporter.get_finished_spans()
    assert failing.status.status_code is trace.StatusCode.ERROR
    assert failing.status.description == "ValueError"
    (event,) = failing.events
    assert event.name == "exception"
    assert dict(event.attributes or {}) == {
        "exception.type": "ValueError",
        "exception.escaped": "False",
    }
    assert "hunter2" not in repr(failing.to_json())
    assert fine.events[0].attributes == {"attempt": 2}  # other events pass unchanged
