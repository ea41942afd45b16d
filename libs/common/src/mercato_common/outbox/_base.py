"""What the PostgreSQL and MongoDB outbox relays share: message, metrics, publishing, loop."""

from __future__ import annotations

import asyncio
import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from aiokafka.errors import KafkaError
from prometheus_client import CollectorRegistry, Counter, Gauge

from mercato_common.kafka.backoff import Backoff
from mercato_common.kafka.envelope import Envelope, envelope_header_map, trace_context_map
from mercato_common.kafka.envelope import extract_trace_context as _extract
from mercato_common.kafka.producer import DeliveryFuture, EventProducer, ProducerNotStartedError
from mercato_common.metrics_set import MetricsSet

__all__ = [
    "OutboxMessage",
    "OutboxMetrics",
    "OutboxRelay",
    "PublishFailedError",
    "event_headers",
    "publish_messages",
    "settle",
]

log = logging.getLogger("mercato_common.outbox")


@dataclass(frozen=True, slots=True)
class OutboxMessage:
    """One stored event, ready to publish: value = serialized envelope, key = subject."""

    id: str
    topic: str
    key: str | None
    payload: bytes
    headers: Mapping[str, str]


def event_headers(envelope: Envelope, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Headers stored with an outbox event: extras, envelope attributes, and the trace context.

    The trace context is captured now, at write time, inside the request's span; the relay
    publishes later from a background task whose own context is unrelated.
    """
    return {**(extra or {}), **envelope_header_map(envelope), **trace_context_map()}


class PublishFailedError(RuntimeError):
    """Some events of a batch were not acknowledged; they stay pending and are retried."""

    def __init__(self, failed: int, total: int, first: BaseException | None) -> None:
        super().__init__(f"{failed} of {total} outbox events not published: {first!r}")
        self.failed = failed
        self.total = total
        self.first = first


class NotAttemptedError(RuntimeError):
    """An event after a failed send in the same batch; it was not handed to the producer."""


async def publish_messages(
    producer: EventProducer,
    messages: Sequence[OutboxMessage],
    *,
    within: float,
) -> list[BaseException | None]:
    """Send all ``messages``, wait for every acknowledgement; one outcome per message (None = ok).

    Everything is bounded by ``within`` seconds: a record not acknowledged by then counts as
    failed even if the broker stores it later (the caller keeps it pending: at worst a duplicate).
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    outcomes: list[BaseException | None] = [None] * len(messages)
    futures: dict[int, DeliveryFuture] = {}
    for i, message in enumerate(messages):
        try:
            futures[i] = await asyncio.wait_for(
                producer.send_traced(
                    message.topic,
                    message.payload,
                    key=message.key,
                    headers=message.headers,
                    parent=_extract(message.headers),
                ),
                max(deadline - loop.time(), 0.0),
            )
        except (KafkaError, OSError, TimeoutError, ProducerNotStartedError) as exc:
            # Stop feeding the producer: what follows would most likely fail the same way.
            outcomes[i] = exc
            for j in range(i + 1, len(messages)):
                outcomes[j] = NotAttemptedError(f"not sent after an earlier failure: {exc!r}")
            break
    if futures:
        await asyncio.wait(futures.values(), timeout=max(deadline - loop.time(), 0.0))
    for i, future in futures.items():
        if not future.done():
            outcomes[i] = TimeoutError("not acknowledged within the publish timeout")
            # Nobody awaits it any more; consume its eventual error to keep the logs quiet.
            future.add_done_callback(_consume_outcome)
        elif future.cancelled():
            outcomes[i] = asyncio.CancelledError("delivery cancelled")
        else:
            outcomes[i] = future.exception()
    return outcomes


def _consume_outcome(future: DeliveryFuture) -> None:
    if not future.cancelled():
        future.exception()


def settle(
    messages: Sequence[OutboxMessage], outcomes: Sequence[BaseException | None]
) -> tuple[list[OutboxMessage], list[BaseException]]:
    """Which messages to mark as sent, and the errors of the others.

    An acknowledged message is kept pending anyway when an earlier message with the same topic and
    key failed: it will be published again after that one, so the last copy of each event on the
    topic is in order per key. (Its first copy already went out; consumers dedupe by event id.)
    """
    if len(messages) != len(outcomes):
        raise ValueError("one outcome per message")
    done: list[OutboxMessage] = []
    errors: list[BaseException] = []
    blocked: set[tuple[str, str]] = set()
    for message, outcome in zip(messages, outcomes, strict=True):
        ordered = message.key is not None
        slot = (message.topic, message.key or "")
        if outcome is not None:
            errors.append(outcome)
            if ordered:
                blocked.add(slot)
        elif ordered and slot in blocked:
            continue
        else:
            done.append(message)
    return done, errors


class OutboxMetrics(MetricsSet):
    """Prometheus metrics of the outbox relays, one set per registry; label ``outbox`` names it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.backlog = Gauge(
            "mercato_outbox_backlog",
            "Outbox events written but not yet published.",
            ["outbox"],
            registry=registry,
        )
        self.oldest_unsent_age = Gauge(
            "mercato_outbox_oldest_unsent_age_seconds",
            "Age of the oldest outbox event not yet published (0 when none).",
            ["outbox"],
            registry=registry,
        )
        self.published = Counter(
            "mercato_outbox_published",
            "Outbox events published to Kafka and marked as sent.",
            ["outbox", "topic"],
            registry=registry,
        )
        self.publish_errors = Counter(
            "mercato_outbox_publish_errors",
            "Outbox events whose publication failed (they stay pending and are retried).",
            ["outbox"],
            registry=registry,
        )


class OutboxRelay(ABC):
    """The relay loop: publish a batch, back off on errors, keep the gauges fresh, tidy up.

    Subclasses implement :meth:`run_once` (one batch) and the housekeeping hooks. ``app.py``
    awaits :meth:`run` in a task and calls :meth:`stop` on shutdown.
    """

    def __init__(
        self,
        producer: EventProducer,
        *,
        name: str,
        batch_size: int,
        poll_interval: float,
        publish_timeout: float,
        backoff: Backoff | None,
        housekeeping_interval: float,
        registry: CollectorRegistry,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self._producer = producer
        self.name = name
        self._batch_size = batch_size
        self._poll_interval = poll_interval
        self._publish_timeout = publish_timeout
        self._backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=5.0)
        self._housekeeping_interval = housekeeping_interval
        self._metrics = OutboxMetrics.for_registry(registry)
        self._metrics.publish_errors.labels(name)  # at 0 from the start, not "no data"
        self._stopping = asyncio.Event()
        self._wakeup = asyncio.Event()
        self._stopped = asyncio.Event()
        self._run_task: asyncio.Task[None] | None = None
        self.consecutive_failures = 0

    @abstractmethod
    async def run_once(self) -> int:
        """Publish one batch; the number of events marked as sent. Raises on failure."""

    async def housekeeping(self) -> None:
        """Refresh the gauges and remove old sent events (bounded); errors are logged."""
        await self.refresh_metrics()

    @abstractmethod
    async def refresh_metrics(self) -> None:
        """Set the backlog and oldest-unsent-age gauges."""

    async def _before_cycle(self) -> None:
        """Hook run before each batch (the PostgreSQL relay keeps its LISTEN connection here)."""
        return None

    async def _on_stop(self) -> None:
        """Hook run once when the loop ends."""
        return None

    def wake(self) -> None:
        """Run the next batch now instead of at the end of the poll interval."""
        self._wakeup.set()

    async def _publish(
        self, messages: Sequence[OutboxMessage]
    ) -> tuple[list[OutboxMessage], PublishFailedError | None]:
        """Publish and count; the messages to mark as sent, and the error to raise afterwards.

        The caller persists the "sent" marks of the acknowledged messages first, then raises.
        """
        outcomes = await publish_messages(self._producer, messages, within=self._publish_timeout)
        done, errors = settle(messages, outcomes)
        if not errors:
            return done, None
        self._metrics.publish_errors.labels(self.name).inc(len(errors))
        return done, PublishFailedError(len(errors), len(messages), errors[0])

    def _count_published(self, messages: Sequence[OutboxMessage]) -> None:
        for message in messages:
            self._metrics.published.labels(self.name, message.topic).inc()

    async def run(self) -> None:
        """Relay until :meth:`stop`. Never gives up on an error: it logs, backs off and retries."""
        self._run_task = asyncio.current_task()
        self._stopped.clear()
        loop = asyncio.get_running_loop()
        next_housekeeping = loop.time()
        try:
            while not self._stopping.is_set():
                try:
                    await self._before_cycle()
                    if not self._producer.started:
                        await self._producer.start()
                    published = await self.run_once()
                    self.consecutive_failures = 0
                except Exception as exc:
                    # A relay must outlive every outage (broker, database, network); the events
                    # stay pending meanwhile. Kafka-side trouble gets a fresh producer.
                    self.consecutive_failures += 1
                    log.warning(
                        "outbox %s: batch failed (%d in a row): %r",
                        self.name,
                        self.consecutive_failures,
                        exc,
                    )
                    if isinstance(exc, PublishFailedError | KafkaError | ProducerNotStartedError):
                        await self._restart_producer()
                    if loop.time() >= next_housekeeping:
                        # The backlog and age gauges must keep moving during an outage: they
                        # are what the stalled-outbox alert watches.
                        next_housekeeping = loop.time() + self._housekeeping_interval
                        await self._refresh_metrics_logged()
                    await self._sleep(self._backoff.delay(self.consecutive_failures))
                    continue
                if loop.time() >= next_housekeeping:
                    next_housekeeping = loop.time() + self._housekeeping_interval
                    try:
                        await self.housekeeping()
                    except Exception as exc:
                        log.warning("outbox %s: housekeeping failed: %r", self.name, exc)
                if published >= self._batch_size:
                    continue  # more is probably waiting
                await self._sleep(self._poll_interval, wake_on_notify=True)
        finally:
            try:
                await self._on_stop()
            finally:
                self._stopped.set()

    async def _refresh_metrics_logged(self) -> None:
        try:
            await self.refresh_metrics()
        except Exception as exc:  # the database may be what is down
            log.warning("outbox %s: refreshing the gauges failed: %r", self.name, exc)

    async def _restart_producer(self) -> None:
        try:
            await self._producer.restart()
        except Exception as exc:
            # Typically "no broker": the next cycle tries start() again after the backoff.
            log.warning("outbox %s: producer restart failed: %r", self.name, exc)

    async def _sleep(self, delay: float, *, wake_on_notify: bool = False) -> None:
        waiters = [asyncio.ensure_future(self._stopping.wait())]
        if wake_on_notify:
            waiters.append(asyncio.ensure_future(self._wakeup.wait()))
        try:
            await asyncio.wait(waiters, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            if wake_on_notify:
                self._wakeup.clear()

    async def stop(self, grace: float = 30.0) -> None:
        """Let the current batch finish (bounded by ``grace`` seconds), then end :meth:`run`."""
        self._stopping.set()
        task = self._run_task
        if task is None or task.done() or task is asyncio.current_task():
            return
        try:
            await asyncio.wait_for(asyncio.shield(self._stopped.wait()), grace)
        except TimeoutError:
            # Cancelling mid-batch is safe: the transaction / lease is abandoned and the events
            # stay pending (at worst published twice).
            log.warning("outbox %s: did not stop within %.1fs; cancelling", self.name, grace)
            task.cancel()
            await asyncio.wait({task}, timeout=grace)
