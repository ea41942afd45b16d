import io
import json
import logging
import time
import urllib.request

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CollectorRegistry, Counter

from mercato_common.telemetry import (
    BufferedStreamHandler,
    JsonLogFormatter,
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


def test_log_line_is_one_json_object_with_service_and_extras() -> None:
    line = _format(_record("stock reserved", order_id="o-1"))
    assert line["message"] == "stock reserved"
    assert line["level"] == "INFO"
    assert line["logger"] == "mercato.test"
    assert line["service"] == "catalog"
    assert line["version"] == "1.2.3"
    assert line["order_id"] == "o-1"
    assert "trace_id" not in line


def test_log_line_carries_the_current_trace_and_span_ids() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("op") as span:
        line = _format(_record("inside a span"))
        context = span.get_span_context()
    assert line["trace_id"] == format(context.trace_id, "032x")
    assert line["span_id"] == format(context.span_id, "016x")


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
        handler.handle(_record("last"))
    finally:
        handler.close()
    assert json.loads(stream.getvalue().splitlines()[-1])["message"] == "last"  # close flushes
