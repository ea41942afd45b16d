"""A Kafka consumer runner: effect first, then commit; bounded retries; a dead-letter topic.

Delivery is at least once. For each record the runner

1. decodes the envelope (an undecodable value goes to the dead-letter topic at once),
2. optionally asks ``already_processed(event)`` and skips the handler when it says so,
3. calls ``handler(event)`` inside a CONSUMER span that continues the producer's trace,
   retrying failures up to ``max_attempts`` with exponential backoff (a :class:`PermanentError`
   or :class:`UndecodableMessageError` skips the retries),
4. after the last failed attempt publishes the record unchanged to the dead-letter topic with the
   error in headers, and
5. commits offsets only for records whose effect (or dead-lettering) is done, after each batch
   and on a clean stop.

A service whose effect can be done for many records at once (one bulk insert keyed by their
event ids) passes ``prepare_batch``: the runner hands it every decodable record of a polled
batch before handling them one by one, and the handler then only confirms what the hook did. A
failing hook is logged and changes nothing else: every record is still handled, retried and
dead-lettered on its own. ``batch_linger_ms`` lets a batch that came back short wait that long
once for more records, so batches grow under load; an idle consumer never waits (its poll
returned nothing).

Idempotency is the handler's job, because only the service can store "event id already applied"
atomically with its effect. The pattern:

* PostgreSQL: in the effect's transaction, ``INSERT INTO processed_events (event_id) VALUES ($1)
  ON CONFLICT DO NOTHING``; if no row was inserted, the event was applied before: return.
* MongoDB (no multi-document transactions): make the effect a single-document update whose
  filter excludes documents that already recorded the event id, e.g. ``{"_id": bucket,
  "applied": {"$ne": event_id}}`` with ``{"$inc": ..., "$push": {"applied": event_id}}``
  (bounded, e.g. with ``$slice``), so the check and the effect are one atomic write.

``event.envelope.id`` is the idempotency key; redeliveries and outbox duplicates carry the same id.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol, TypeVar

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, IllegalStateError, KafkaError
from google.protobuf import message as pb_message
from opentelemetry import trace
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from mercato_common.kafka.backoff import Backoff
from mercato_common.kafka.connection import KafkaConnection
from mercato_common.kafka.envelope import (
    Envelope,
    UndecodableMessageError,
    decode_envelope,
    extract_trace_context,
    headers_to_map,
    unpack_data,
)
from mercato_common.metrics_set import MetricsSet
from mercato_common.redaction import redact, truncate
from mercato_common.telemetry import instrument_client

__all__ = [
    "IDLE_POLL_TIMEOUT_MS",
    "QUIET_FETCH_OPTIONS",
    "BatchHook",
    "ConsumedEvent",
    "ConsumerMetrics",
    "ConsumerRunner",
    "DeadLetterPublishError",
    "DeadLetterSink",
    "Handler",
    "HandlerFailedError",
    "PermanentError",
    "dead_letter_headers",
    "error_text",
]

log = logging.getLogger(__name__)

_M = TypeVar("_M", bound=pb_message.Message)

# Header names added to a dead-lettered record (the original headers are kept).
DLQ_PREFIX = "dlq_"
H_DLQ_TOPIC = "dlq_original_topic"
H_DLQ_PARTITION = "dlq_original_partition"
H_DLQ_OFFSET = "dlq_original_offset"
H_DLQ_TIMESTAMP = "dlq_original_timestamp"
H_DLQ_GROUP = "dlq_consumer_group"
H_DLQ_ERROR_TYPE = "dlq_error_type"
H_DLQ_ERROR_MESSAGE = "dlq_error_message"
H_DLQ_ATTEMPTS = "dlq_attempts"
H_DLQ_FAILED_AT = "dlq_failed_at"

MAX_ERROR_MESSAGE = 512

# aiokafka options for every long-lived consumer: an idle one wakes twice in 5 s, not 5 + 2 times
# a second. aiokafka's fetch routine re-checks every consumer_timeout_ms (200 by default) and
# each fetch waits on the broker for at most fetch_max_wait_ms (500) before an empty answer. A
# record that arrives ends that wait at once (fetch_min_bytes 1), so delivery is not slower;
# only partitions newly assigned by a rebalance wait for the fetch in flight to end (at most
# 5 s, on the order of the rebalance itself). Measured on `make run` with no traffic, 60 s, 1 s
# -> 5 s: analytics (two consumers) 0.45 -> 0.28 % of a core, the gateway 0.20 -> 0.17 %, Kafka
# 3.1 -> 2.5 %.
QUIET_FETCH_OPTIONS: Mapping[str, int] = MappingProxyType(
    {"consumer_timeout_ms": 5_000, "fetch_max_wait_ms": 5_000}
)
# How long an idle consumer's poll waits for records (``getmany``): as long as the broker holds
# its empty fetch, so an idle consumer wakes once per fetch, not once a second.
IDLE_POLL_TIMEOUT_MS = QUIET_FETCH_OPTIONS["fetch_max_wait_ms"]


class PermanentError(Exception):
    """Raised by a handler for a message that can never succeed: no retries, dead-letter now."""


class HandlerFailedError(RuntimeError):
    """A message kept failing and no dead-letter topic is configured: the runner stops."""


class DeadLetterPublishError(RuntimeError):
    """The dead-letter topic could not be written: the runner stops without committing."""


class DeadLetterSink(Protocol):
    """What the runner needs to dead-letter a record; :class:`EventProducer` is one."""

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Any: ...


@dataclass(frozen=True, slots=True)
class ConsumedEvent:
    """What a handler receives: the decoded envelope and the raw aiokafka record."""

    envelope: Envelope
    record: Any
    headers: Mapping[str, str]
    attempt: int

    @property
    def topic(self) -> str:
        return str(self.record.topic)

    @property
    def partition(self) -> int:
        return int(self.record.partition)

    @property
    def offset(self) -> int:
        return int(self.record.offset)

    @property
    def key(self) -> bytes | None:
        key: bytes | None = self.record.key
        return key

    @property
    def event_id(self) -> str:
        return self.envelope.id

    def unpack(self, message_type: type[_M]) -> _M:
        """The payload as ``message_type`` (:class:`UndecodableMessageError` if it is not)."""
        return unpack_data(self.envelope, message_type)


Handler = Callable[[ConsumedEvent], Awaitable[None]]
BatchHook = Callable[[Sequence[ConsumedEvent]], Awaitable[None]]


class ConsumerMetrics(MetricsSet):
    """Prometheus metrics of the consumer runner, one set per registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.messages = Counter(
            "mercato_kafka_consumer_messages",
            "Records handled by the consumer runner, by outcome "
            "(processed, duplicate, retried, dead_lettered).",
            ["group", "topic", "outcome"],
            registry=registry,
        )
        self.lag = Gauge(
            "mercato_kafka_consumer_lag",
            "Records between the last handled offset and the partition's high watermark.",
            ["group", "topic", "partition"],
            registry=registry,
        )


def error_text(error: object) -> str:
    """What a dead-letter header says of an error: redacted, at most MAX_ERROR_MESSAGE."""
    return truncate(redact(str(error)), MAX_ERROR_MESSAGE)


def dead_letter_headers(
    record: Any,
    *,
    group_id: str,
    error: BaseException,
    attempts: int,
    failed_at: datetime | None = None,
) -> list[tuple[str, bytes]]:
    """The original headers (minus earlier ``dlq_*`` ones) plus where it came from and why."""
    kept = [
        (name, value if value is not None else b"")
        for name, value in (record.headers or ())
        if not name.startswith(DLQ_PREFIX)
    ]
    when = failed_at if failed_at is not None else datetime.now(UTC)
    added = {
        H_DLQ_TOPIC: str(record.topic),
        H_DLQ_PARTITION: str(record.partition),
        H_DLQ_OFFSET: str(record.offset),
        H_DLQ_TIMESTAMP: str(record.timestamp),
        H_DLQ_GROUP: group_id,
        H_DLQ_ERROR_TYPE: f"{type(error).__module__}.{type(error).__qualname__}",
        H_DLQ_ERROR_MESSAGE: error_text(error),
        H_DLQ_ATTEMPTS: str(attempts),
        H_DLQ_FAILED_AT: when.isoformat(),
    }
    return kept + [(name, value.encode()) for name, value in added.items()]


def _decoded(record: Any) -> tuple[dict[str, str], Envelope | UndecodableMessageError]:
    """A record's headers, and its envelope or why it cannot be decoded."""
    headers = headers_to_map(record.headers)
    try:
        return headers, decode_envelope(record.value)
    except UndecodableMessageError as exc:
        return headers, exc


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    def __init__(self, runner: ConsumerRunner) -> None:
        self._runner = runner

    async def on_partitions_revoked(self, revoked: Sequence[TopicPartition]) -> None:
        # Commit what is done on the partitions we lose, so the next owner does not redo it.
        await self._runner._commit(only=set(revoked))
        self._runner._forget_lag(revoked)

    async def on_partitions_assigned(self, assigned: Sequence[TopicPartition]) -> None:
        return None


class ConsumerRunner:
    """Consume ``topics`` in consumer group ``group_id`` and apply ``handler`` to every record.

    ``app.py`` creates it, awaits :meth:`run` in a task, and calls :meth:`stop` on shutdown: the
    current record is finished (or, if it is waiting between retries, abandoned uncommitted),
    done offsets are committed and the group is left.

    ``dead_letter_topic`` is a topic name, or a function of the source topic. Without one, a record
    that exhausts its attempts stops the runner (:class:`HandlerFailedError`) rather than being
    skipped silently.

    :meth:`run` raises when the broker is unreachable at start, or on a fatal error; the app
    decides whether to retry (with a new runner: a stopped runner does not run again). Offsets are
    committed after a batch once ``commit_interval`` seconds have passed since the last commit
    (0: after every batch), when partitions are revoked, and on stop; after a crash what was done
    since the last commit is delivered again, which the idempotent handler absorbs. The interval
    spares the broker a commit per small batch under a steady trickle of events.

    A poll waits up to ``poll_timeout_ms`` for records, and ``idle_poll_timeout_ms`` once the
    last poll was empty and everything done is committed: records end either wait at once, and
    :meth:`stop` ends the idle one, so the longer wait only spares an idle process its wake-ups.
    """

    def __init__(
        self,
        connection: KafkaConnection | str,
        *,
        group_id: str,
        topics: Sequence[str],
        handler: Handler,
        dead_letter_topic: str | Callable[[str], str] | None = None,
        dead_letter_producer: DeadLetterSink | None = None,
        already_processed: Callable[[ConsumedEvent], Awaitable[bool]] | None = None,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        dead_letter_attempts: int = 5,
        dead_letter_timeout: float = 30.0,
        auto_offset_reset: str = "earliest",
        max_poll_records: int = 100,
        poll_timeout_ms: int = 1_000,
        idle_poll_timeout_ms: int = IDLE_POLL_TIMEOUT_MS,
        session_timeout_ms: int = 10_000,
        heartbeat_interval_ms: int = 3_000,
        max_poll_interval_ms: int = 300_000,
        commit_interval: float = 1.0,
        prepare_batch: BatchHook | None = None,
        batch_linger_ms: int = 0,
        consumer_options: Mapping[str, Any] | None = None,
        registry: CollectorRegistry = REGISTRY,
        tracer_provider: trace.TracerProvider | None = None,
        consumer_factory: Callable[[], Any] | None = None,
    ) -> None:
        if not topics:
            raise ValueError("topics must not be empty")
        if max_attempts < 1 or dead_letter_attempts < 1:
            raise ValueError("attempts must be >= 1")
        if dead_letter_topic is not None and dead_letter_producer is None:
            raise ValueError("dead_letter_topic needs a dead_letter_producer")
        self._connection = (
            connection
            if isinstance(connection, KafkaConnection)
            else KafkaConnection(bootstrap_servers=connection)
        )
        self.group_id = group_id
        self.topics = tuple(topics)
        self._handler = handler
        self._dlq_topic = dead_letter_topic
        self._dlq = dead_letter_producer
        self._already_processed = already_processed
        self._max_attempts = max_attempts
        self._backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=10.0)
        self._dlq_attempts = dead_letter_attempts
        self._dlq_timeout = dead_letter_timeout
        self._poll_timeout_ms = poll_timeout_ms
        self._idle_poll_timeout_ms = max(idle_poll_timeout_ms, poll_timeout_ms)
        self._max_poll_records = max_poll_records
        if commit_interval < 0:
            raise ValueError("commit_interval must be >= 0")
        self._commit_interval = commit_interval
        if batch_linger_ms < 0:
            raise ValueError("batch_linger_ms must be >= 0")
        self._prepare_batch = prepare_batch
        self._batch_linger = batch_linger_ms / 1000
        self._consumer_kwargs: dict[str, Any] = {
            **self._connection.client_kwargs(),
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": auto_offset_reset,
            "max_poll_records": max_poll_records,
            "session_timeout_ms": session_timeout_ms,
            "heartbeat_interval_ms": heartbeat_interval_ms,
            "max_poll_interval_ms": max_poll_interval_ms,
            **QUIET_FETCH_OPTIONS,
            **(consumer_options or {}),
        }
        self._consumer_factory = consumer_factory
        self._metrics = ConsumerMetrics.for_registry(registry)
        # Every outcome of every topic at 0 from the start: dashboards show 0, not "no data".
        for topic in self.topics:
            for outcome in ("processed", "duplicate", "retried", "dead_lettered"):
                self._metrics.messages.labels(self.group_id, topic, outcome)
        self._tracer = trace.get_tracer("mercato_common.kafka", tracer_provider=tracer_provider)
        self._consumer: Any = None
        # Next offset to commit per partition (offset of the last done record + 1).
        self._done: dict[TopicPartition, int] = {}
        # Next offset to handle per partition, for the lag gauge.
        self._last_positions: dict[TopicPartition, int] = {}
        self._stopping = asyncio.Event()
        self._stopped = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self._commit_lock = asyncio.Lock()
        self._commit_timeout = 10.0

    # -- lifecycle ---------------------------------------------------------------------------

    def _new_consumer(self) -> Any:
        instrument_client("aiokafka")
        if self._consumer_factory is not None:
            return self._consumer_factory()
        return AIOKafkaConsumer(**self._consumer_kwargs)

    async def start(self) -> None:
        """Connect and subscribe; raises aiokafka's ``KafkaConnectionError`` without a broker."""
        if self._consumer is not None:
            return
        consumer = self._new_consumer()
        consumer.subscribe(list(self.topics), listener=_Listener(self))
        await consumer.start()
        self._consumer = consumer

    async def run(self) -> None:
        """Consume until :meth:`stop`; raises on a fatal error (after closing the consumer)."""
        self._run_task = asyncio.current_task()
        self._stopped.clear()
        try:
            await self.start()
            loop = asyncio.get_running_loop()
            next_commit = loop.time()
            idle = False
            while not self._stopping.is_set():
                if idle:
                    idle_batch = await self._idle_poll()
                    if idle_batch is None:
                        break
                    batch = idle_batch
                else:
                    batch = await self._consumer.getmany(
                        timeout_ms=self._poll_timeout_ms, max_records=self._max_poll_records
                    )
                if batch and self._batch_linger:
                    batch = await self._linger_for_more(batch)
                if not await self._handle_batch(batch):
                    break
                if loop.time() >= next_commit:
                    await self._commit()
                    next_commit = loop.time() + self._commit_interval
                self._update_lag()
                # Nothing came and everything done is committed: wait longer for the next
                # records (they end the wait at once), so an idle consumer wakes rarely.
                idle = not batch and not self._done
        finally:
            # Also after a fatal error: what was done before it need not be redone.
            try:
                await asyncio.wait_for(self._commit(), self._commit_timeout)
            except Exception as exc:
                log.warning("final offset commit for %s failed: %r", self.group_id, exc)
            await self._close()
            self._stopped.set()

    async def _idle_poll(self) -> Mapping[TopicPartition, Sequence[Any]] | None:
        """The next batch, waiting up to ``idle_poll_timeout_ms``; None when :meth:`stop`
        came first (it must not wait for the poll to time out)."""
        poll = asyncio.ensure_future(
            self._consumer.getmany(
                timeout_ms=self._idle_poll_timeout_ms, max_records=self._max_poll_records
            )
        )
        stopping = asyncio.ensure_future(self._stopping.wait())
        try:
            await asyncio.wait({poll, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
            if not poll.done():
                # Nothing was taken yet: the records stay where the next poll (or the
                # partitions' next owner) finds them.
                poll.cancel()
                await asyncio.wait({poll})
        if poll.cancelled():
            return None
        batch: Mapping[TopicPartition, Sequence[Any]] = poll.result()
        return batch

    async def stop(self, grace: float = 30.0) -> None:
        """Finish the current record, commit, leave the group; bounded by ``grace`` seconds."""
        self._stopping.set()
        task = self._run_task
        if task is None or task.done() or task is asyncio.current_task():
            await self._close()
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped.wait()), grace)
        except TimeoutError:
            log.warning("consumer %s did not stop within %.1fs; cancelling", self.group_id, grace)
            task.cancel()
            await asyncio.wait({task}, timeout=grace)

    async def _close(self) -> None:
        consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                # Leaves the group, so the partitions move to another member at once.
                await consumer.stop()
            except (KafkaError, OSError) as exc:
                log.warning("consumer %s did not close cleanly: %s", self.group_id, exc)

    # -- processing --------------------------------------------------------------------------

    async def _linger_for_more(
        self, batch: Mapping[TopicPartition, Sequence[Any]]
    ) -> Mapping[TopicPartition, Sequence[Any]]:
        """A short batch, with what arrived during one wait of ``batch_linger_ms`` added."""
        count = sum(len(records) for records in batch.values())
        if count >= self._max_poll_records or await self._sleep_or_stop(self._batch_linger):
            return batch
        more = await self._consumer.getmany(
            timeout_ms=0, max_records=self._max_poll_records - count
        )
        if not more:
            return batch
        merged = {tp: list(records) for tp, records in batch.items()}
        for tp, records in more.items():
            merged.setdefault(tp, []).extend(records)
        return merged

    async def _handle_batch(self, batch: Mapping[TopicPartition, Sequence[Any]]) -> bool:
        """Process a getmany() result; False when stopping interrupted it."""
        decoded = {
            (tp, int(record.offset)): _decoded(record)
            for tp, records in batch.items()
            for record in records
        }
        if self._prepare_batch is not None:
            await self._prepare(batch, decoded)
        for tp, records in batch.items():
            for record in records:
                if self._stopping.is_set():
                    return False
                if tp not in self._consumer.assignment():
                    # Revoked by a rebalance meanwhile: the new owner will process the rest.
                    break
                if not await self._process(record, *decoded[tp, int(record.offset)]):
                    return False
                self._done[tp] = self._last_positions[tp] = int(record.offset) + 1
        return True

    async def _prepare(
        self,
        batch: Mapping[TopicPartition, Sequence[Any]],
        decoded: Mapping[
            tuple[TopicPartition, int], tuple[dict[str, str], Envelope | UndecodableMessageError]
        ],
    ) -> None:
        """Hand the batch's decodable records to ``prepare_batch``, in one span linked to each
        record's producer (the messaging convention for work done on a batch)."""
        assert self._prepare_batch is not None
        events: list[ConsumedEvent] = []
        links: list[trace.Link] = []
        for tp, records in batch.items():
            for record in records:
                headers, envelope = decoded[tp, int(record.offset)]
                if isinstance(envelope, Envelope):
                    events.append(
                        ConsumedEvent(envelope=envelope, record=record, headers=headers, attempt=1)
                    )
                    producer = trace.get_current_span(extract_trace_context(headers))
                    if producer.get_span_context().is_valid:
                        links.append(trace.Link(producer.get_span_context()))
        if not events:
            return
        with self._tracer.start_as_current_span(
            "process batch",
            kind=trace.SpanKind.CONSUMER,
            links=links,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.consumer.group.name": self.group_id,
                "messaging.batch.message_count": len(events),
            },
        ) as span:
            try:
                await self._prepare_batch(events)
            except Exception as exc:
                # Each record is handled (and retried, or dead-lettered) on its own next.
                span.record_exception(exc)
                log.warning(
                    "preparing %d records of %s failed; handling them one by one: %s",
                    len(events),
                    self.group_id,
                    error_text(repr(exc)),
                )

    async def process(self, record: Any) -> bool:
        """Apply the handler to one record (retries, dead-letter). False if stopping cut it short.

        Public so that a service can unit-test its handler wiring with hand-made records.
        """
        return await self._process(record, *_decoded(record))

    async def _process(
        self, record: Any, headers: dict[str, str], envelope: Envelope | UndecodableMessageError
    ) -> bool:
        topic = str(record.topic)
        if not isinstance(envelope, Envelope):
            log.warning(
                "undecodable record %s[%s]@%s: %s", topic, record.partition, record.offset, envelope
            )
            return await self._dead_letter(record, envelope, attempts=0)

        parent = extract_trace_context(headers)
        with self._tracer.start_as_current_span(
            f"process {topic}",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka",
                "messaging.operation.type": "process",
                "messaging.destination.name": topic,
                "messaging.consumer.group.name": self.group_id,
                "messaging.destination.partition.id": str(record.partition),
                "messaging.kafka.offset": int(record.offset),
                "messaging.message.id": envelope.id,
                "mercato.event.type": envelope.type,
            },
        ) as span:
            attempt = 0
            while True:
                attempt += 1
                event = ConsumedEvent(
                    envelope=envelope, record=record, headers=headers, attempt=attempt
                )
                try:
                    if self._already_processed is not None and await self._already_processed(event):
                        self._metrics.messages.labels(self.group_id, topic, "duplicate").inc()
                        return True
                    await self._handler(event)
                except (PermanentError, UndecodableMessageError) as exc:
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                    return await self._dead_letter(record, exc, attempts=attempt)
                except Exception as exc:
                    span.record_exception(exc)
                    self._metrics.messages.labels(self.group_id, topic, "retried").inc()
                    if attempt >= self._max_attempts:
                        span.set_status(trace.Status(trace.StatusCode.ERROR, type(exc).__name__))
                        log.error(
                            "record %s[%s]@%s failed %d times: %s",
                            topic,
                            record.partition,
                            record.offset,
                            attempt,
                            error_text(repr(exc)),
                        )
                        return await self._dead_letter(record, exc, attempts=attempt)
                    log.warning(
                        "record %s[%s]@%s attempt %d failed: %s",
                        topic,
                        record.partition,
                        record.offset,
                        attempt,
                        error_text(repr(exc)),
                    )
                    if await self._sleep_or_stop(self._backoff.delay(attempt)):
                        return False
                else:
                    self._metrics.messages.labels(self.group_id, topic, "processed").inc()
                    return True

    async def _dead_letter(self, record: Any, error: BaseException, *, attempts: int) -> bool:
        topic = str(record.topic)
        if self._dlq_topic is None or self._dlq is None:
            raise HandlerFailedError(
                f"record {topic}[{record.partition}]@{record.offset} failed and no dead-letter "
                f"topic is configured"
            ) from error
        dlq_topic = self._dlq_topic if isinstance(self._dlq_topic, str) else self._dlq_topic(topic)
        headers = dead_letter_headers(
            record, group_id=self.group_id, error=error, attempts=attempts
        )
        for attempt in range(1, self._dlq_attempts + 1):
            try:
                await asyncio.wait_for(
                    self._dlq.send_and_wait(
                        dlq_topic, record.value or b"", key=record.key, headers=headers
                    ),
                    self._dlq_timeout,
                )
            except (KafkaError, OSError, TimeoutError) as exc:
                log.warning(
                    "dead-letter publish to %s failed (attempt %d): %s", dlq_topic, attempt, exc
                )
                if attempt == self._dlq_attempts:
                    raise DeadLetterPublishError(
                        f"could not dead-letter {topic}[{record.partition}]@{record.offset}"
                    ) from exc
                if await self._sleep_or_stop(self._backoff.delay(attempt)):
                    return False
            else:
                self._metrics.messages.labels(self.group_id, topic, "dead_lettered").inc()
                log.warning(
                    "record %s[%s]@%s parked on %s",
                    topic,
                    record.partition,
                    record.offset,
                    dlq_topic,
                )
                return True
        raise AssertionError("unreachable")  # pragma: no cover

    async def _sleep_or_stop(self, delay: float) -> bool:
        """Sleep ``delay`` seconds; True if :meth:`stop` was called meanwhile."""
        try:
            await asyncio.wait_for(self._stopping.wait(), delay)
        except TimeoutError:
            return False
        return True

    async def _commit(self, only: set[TopicPartition] | None = None) -> None:
        async with self._commit_lock:
            consumer = self._consumer
            if consumer is None or not self._done:
                return
            # A partition that moved to another member is its new owner's: it resumes from the
            # last commit and redoes (idempotently) what we did since. Committing it with the
            # others would fail them all, and those we still own would keep a committed offset
            # behind their position until new records came.
            owned = consumer.assignment()
            for tp in [tp for tp in self._done if tp not in owned]:
                del self._done[tp]
            offsets = {tp: off for tp, off in self._done.items() if only is None or tp in only}
            if not offsets:
                return
            try:
                await consumer.commit(offsets)
            except (CommitFailedError, IllegalStateError) as exc:
                # The assignment changed meanwhile: the next commit carries the offsets of the
                # partitions still ours (the others are dropped above).
                log.warning("offset commit for %s lost to a rebalance: %s", self.group_id, exc)
                return
            except KafkaError as exc:
                # Keep the offsets; the next commit carries them again.
                log.warning("offset commit for %s failed: %s", self.group_id, exc)
                return
            for tp, off in offsets.items():
                if self._done.get(tp) == off:
                    del self._done[tp]

    def _forget_lag(self, partitions: Sequence[TopicPartition]) -> None:
        """Drop the lag series of partitions this consumer no longer owns: their new owner
        reports them, and a frozen value here would add phantom lag to every sum."""
        for tp in partitions:
            with contextlib.suppress(KeyError):
                self._metrics.lag.remove(self.group_id, tp.topic, str(tp.partition))

    def _update_lag(self) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            high = consumer.highwater(tp)
            last = self._last_positions.get(tp)
            if high is None or last is None:
                continue
            self._metrics.lag.labels(self.group_id, tp.topic, str(tp.partition)).set(
                max(high - last, 0)
            )
