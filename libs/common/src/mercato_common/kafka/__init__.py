"""Kafka helpers on aiokafka: envelope on the wire, idempotent producer, consumer runner and
consumer group."""

from mercato_common.kafka.backoff import Backoff
from mercato_common.kafka.connection import (
    KafkaCertificates,
    KafkaConnection,
    kafka_connection,
    kafka_tls_reload,
)
from mercato_common.kafka.consumer import (
    IDLE_POLL_TIMEOUT_MS,
    QUIET_FETCH_OPTIONS,
    ConsumedEvent,
    ConsumerMetrics,
    ConsumerRunner,
    DeadLetterPublishError,
    DeadLetterSink,
    Handler,
    HandlerFailedError,
    PermanentError,
    dead_letter_headers,
    error_text,
)
from mercato_common.kafka.envelope import (
    CONTENT_TYPE,
    Envelope,
    UndecodableMessageError,
    decode_envelope,
    envelope_header_map,
    event_type_name,
    extract_trace_context,
    headers_to_map,
    map_to_headers,
    new_envelope,
    trace_context_map,
    unpack_data,
)
from mercato_common.kafka.group import ConsumerGroup
from mercato_common.kafka.producer import (
    DeliveryFuture,
    EventProducer,
    ProducerNotStartedError,
)

__all__ = [
    "CONTENT_TYPE",
    "IDLE_POLL_TIMEOUT_MS",
    "QUIET_FETCH_OPTIONS",
    "Backoff",
    "ConsumedEvent",
    "ConsumerGroup",
    "ConsumerMetrics",
    "ConsumerRunner",
    "DeadLetterPublishError",
    "DeadLetterSink",
    "DeliveryFuture",
    "Envelope",
    "EventProducer",
    "Handler",
    "HandlerFailedError",
    "KafkaCertificates",
    "KafkaConnection",
    "PermanentError",
    "ProducerNotStartedError",
    "UndecodableMessageError",
    "dead_letter_headers",
    "decode_envelope",
    "envelope_header_map",
    "error_text",
    "event_type_name",
    "extract_trace_context",
    "headers_to_map",
    "kafka_connection",
    "kafka_tls_reload",
    "map_to_headers",
    "new_envelope",
    "trace_context_map",
    "unpack_data",
]
