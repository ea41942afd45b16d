"""The event envelope on the wire: building, decoding, Kafka headers and trace context.

A Kafka message carries one serialized ``mercato.events.v1.Envelope`` as its value and the
envelope's ``subject`` (the aggregate id) as its key, so that every event of one aggregate lands
on one partition, in order. The envelope attributes are repeated as headers in the style of the
CloudEvents Kafka binding (``ce_id``, ``ce_type``, ...) so that routers, the dead-letter tooling
and humans can read them without decoding the value, and the W3C trace context (``traceparent``,
``tracestate``) travels in headers too, so one trace runs from the request to the consumer.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TypeVar

from google.protobuf import message as pb_message
from opentelemetry import propagate
from opentelemetry.context import Context

from mercato.events.v1.envelope_pb2 import Envelope
from mercato_common.timestamps import timestamp

__all__ = [
    "CE_SPECVERSION",
    "CONTENT_TYPE",
    "Envelope",
    "UndecodableMessageError",
    "decode_envelope",
    "envelope_header_map",
    "event_type_name",
    "extract_trace_context",
    "headers_to_map",
    "map_to_headers",
    "new_envelope",
    "trace_context_map",
    "unpack_data",
]

CONTENT_TYPE = "application/x-protobuf"
CE_SPECVERSION = "1.0"

# Header names, CloudEvents Kafka protocol binding style (binary mode attribute names).
H_SPECVERSION = "ce_specversion"
H_ID = "ce_id"
H_TYPE = "ce_type"
H_SOURCE = "ce_source"
H_TIME = "ce_time"
H_SUBJECT = "ce_subject"
H_SCHEMA_VERSION = "ce_schemaversion"
H_CONTENT_TYPE = "content-type"

_M = TypeVar("_M", bound=pb_message.Message)


class UndecodableMessageError(ValueError):
    """A Kafka value that is not a valid envelope, or whose payload is not the expected type.

    Retrying cannot help, so the consumer runner parks such messages on the dead-letter topic at
    once.
    """


def event_type_name(message: pb_message.Message | type[pb_message.Message]) -> str:
    """The full protobuf name of a payload message, used as the envelope ``type``."""
    return message.DESCRIPTOR.full_name


def new_envelope(
    data: pb_message.Message,
    *,
    source: str,
    subject: str,
    schema_version: int = 1,
    event_id: str | None = None,
    time: datetime | None = None,
) -> Envelope:
    """Wrap a payload message in a fresh envelope (new UUID, current UTC time by default)."""
    if not source:
        raise ValueError("source must name the producing service")
    if not subject:
        raise ValueError("subject must be the aggregate id (it becomes the Kafka key)")
    when = time if time is not None else datetime.now(UTC)
    if when.tzinfo is None:
        raise ValueError("time must be timezone-aware")
    envelope = Envelope(
        id=event_id if event_id is not None else str(uuid.uuid4()),
        type=event_type_name(data),
        source=source,
        subject=subject,
        schema_version=schema_version,
    )
    envelope.time.CopyFrom(timestamp(when))
    envelope.data.Pack(data)
    return envelope


def decode_envelope(value: bytes | None) -> Envelope:
    """Parse and check a Kafka value; :class:`UndecodableMessageError` if it is no envelope.

    Protobuf parsing alone accepts many random byte strings (as unknown fields), so the required
    attributes are checked too.
    """
    if not value:
        raise UndecodableMessageError("empty message value")
    envelope = Envelope()
    try:
        envelope.ParseFromString(value)
    except pb_message.DecodeError as exc:
        raise UndecodableMessageError(f"not a protobuf Envelope: {exc}") from exc
    try:
        uuid.UUID(envelope.id)
    except ValueError as exc:
        raise UndecodableMessageError("envelope id is not a UUID") from exc
    if not envelope.type or not envelope.HasField("data"):
        raise UndecodableMessageError("envelope has no type or no data")
    if envelope.data.TypeName() != envelope.type:
        raise UndecodableMessageError(
            f"envelope type {envelope.type!r} does not match its data {envelope.data.TypeName()!r}"
        )
    return envelope


def unpack_data(envelope: Envelope, message_type: type[_M]) -> _M:
    """The payload as ``message_type``; :class:`UndecodableMessageError` if it is another type."""
    expected = message_type.DESCRIPTOR.full_name
    out = message_type()
    if envelope.data.TypeName() != expected or not envelope.data.Unpack(out):
        raise UndecodableMessageError(f"expected {expected}, got {envelope.data.TypeName()}")
    return out


def envelope_header_map(envelope: Envelope) -> dict[str, str]:
    """The envelope attributes as CloudEvents-style header values."""
    headers = {
        H_SPECVERSION: CE_SPECVERSION,
        H_ID: envelope.id,
        H_TYPE: envelope.type,
        H_SOURCE: envelope.source,
        H_SUBJECT: envelope.subject,
        H_SCHEMA_VERSION: str(envelope.schema_version),
        H_CONTENT_TYPE: CONTENT_TYPE,
    }
    if envelope.HasField("time"):
        headers[H_TIME] = envelope.time.ToJsonString()
    return headers


def trace_context_map(context: Context | None = None) -> dict[str, str]:
    """The W3C trace context (``traceparent``/``tracestate``) of ``context`` or the current one.

    Empty when there is no active span (or no propagator configured).
    """
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=context)
    return carrier


def extract_trace_context(headers: Mapping[str, str]) -> Context:
    """A context whose parent span is the producer's, from header values."""
    return propagate.extract(headers)


def map_to_headers(values: Mapping[str, str]) -> list[tuple[str, bytes]]:
    """Header mapping -> aiokafka's ``[(name, bytes)]`` form."""
    return [(name, value.encode()) for name, value in values.items()]


def headers_to_map(headers: Iterable[tuple[str, bytes | None]] | None) -> dict[str, str]:
    """aiokafka's record headers -> mapping; the last value wins, undecodable bytes are replaced."""
    out: dict[str, str] = {}
    for name, value in headers or ():
        out[name] = value.decode("utf-8", errors="replace") if value is not None else ""
    return out
