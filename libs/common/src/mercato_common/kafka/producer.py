"""An idempotent Kafka producer (aiokafka) that carries the envelope and trace context in headers.

The service's ``app.py`` builds one :class:`EventProducer` from its settings, starts it, and hands
it to the outbox relay and to the consumer runner (for dead-lettering). Nothing here reads the
environment.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from opentelemetry import context as otel_context
from opentelemetry.context import Context

from mercato_common.kafka.connection import KafkaConnection
from mercato_common.kafka.envelope import (
    Envelope,
    envelope_header_map,
    map_to_headers,
)
from mercato_common.telemetry import instrument_client

__all__ = ["DeliveryFuture", "EventProducer", "KafkaConnection", "ProducerNotStartedError"]

log = logging.getLogger(__name__)

# aiokafka resolves a send to a RecordMetadata (untyped library, so Any here).
DeliveryFuture = asyncio.Future[Any]


class ProducerNotStartedError(RuntimeError):
    """send() before start(), or after stop()."""


class EventProducer:
    """Idempotent (``enable_idempotence=True``, ``acks="all"``) producer wrapper.

    Idempotence makes the broker drop the duplicates that the producer's own retries would
    create; it does not dedupe across producers or restarts, which is why consumers are idempotent
    on the envelope id too.

    :meth:`restart` replaces the underlying client with a fresh one (new producer id). The outbox
    relay calls it after a failed batch: after a broker outage an aiokafka idempotent producer can
    stay stuck on ``OutOfOrderSequenceNumber`` (aio-libs/aiokafka#1017), and a new producer id is
    the way out. Records still buffered in the old client are abandoned, which is safe for the
    outbox (the rows stay unsent and are published again).
    """

    def __init__(
        self,
        connection: KafkaConnection | str,
        *,
        request_timeout_ms: int = 30_000,
        linger_ms: int = 5,
        max_batch_size: int = 16_384,
        max_request_size: int = 1_048_576,
        compression_type: str | None = None,
        close_timeout: float = 10.0,
    ) -> None:
        self._connection = (
            connection
            if isinstance(connection, KafkaConnection)
            else KafkaConnection(bootstrap_servers=connection)
        )
        self._options: dict[str, Any] = {
            "enable_idempotence": True,
            "acks": "all",
            "request_timeout_ms": request_timeout_ms,
            "linger_ms": linger_ms,
            "max_batch_size": max_batch_size,
            "max_request_size": max_request_size,
            "compression_type": compression_type,
        }
        self._close_timeout = close_timeout
        self._producer: Any = None
        # Delivery futures handed out per client, so a hard close can fail the ones that the
        # abandoned client will never resolve (their awaiters would otherwise hang forever).
        self._pending: dict[Any, set[DeliveryFuture]] = {}
        # Kept as a plain count (not summed over _pending) so the metrics thread can read it.
        self._pending_count = 0
        self._lock = asyncio.Lock()

    @property
    def connection(self) -> KafkaConnection:
        return self._connection

    @property
    def started(self) -> bool:
        return self._producer is not None

    @property
    def pending_messages(self) -> int:
        """Records handed to the client whose acknowledgement (or failure) is still to come."""
        return self._pending_count

    def _new_client(self) -> Any:
        """The aiokafka client; a seam for unit tests."""
        instrument_client("aiokafka")
        return AIOKafkaProducer(**self._connection.client_kwargs(), **self._options)

    async def start(self) -> None:
        """Connect; raises aiokafka's ``KafkaConnectionError`` when no broker answers."""
        async with self._lock:
            if self._producer is not None:
                return
            client = self._new_client()
            try:
                await client.start()
            except BaseException:
                await self._close_client(client)
                raise
            self._producer = client

    async def stop(self) -> None:
        """Flush what is buffered (bounded by ``close_timeout``) and disconnect."""
        async with self._lock:
            client, self._producer = self._producer, None
        if client is not None:
            await self._close_client(client)

    async def restart(self) -> None:
        """Replace the client with a fresh one (new producer id); see the class docstring."""
        async with self._lock:
            old, self._producer = self._producer, None
        if old is not None:
            await self._close_client(old)
        await self.start()

    async def _close_client(self, client: Any) -> None:
        try:
            await self._stop_client(client)
        finally:
            abandoned = self._pending.pop(client, set())
            for future in abandoned:
                if not future.done():
                    future.set_exception(KafkaError("producer closed before delivery"))
                    # Marks it retrieved: no "exception never retrieved" noise when nobody waits.
                    future.exception()

    async def _stop_client(self, client: Any) -> None:
        try:
            await asyncio.wait_for(client.stop(), self._close_timeout)
        except (TimeoutError, KafkaError, OSError) as exc:
            # An idempotent producer retries forever while the broker is away, so a graceful stop
            # can hang. Fall back to cancelling its sender task; the private attribute is guarded
            # because aiokafka may rename it.
            log.warning("kafka producer did not stop cleanly (%r); closing it hard", exc)
            sender = getattr(client, "_sender", None)
            if sender is not None:
                try:
                    await asyncio.wait_for(sender.close(), self._close_timeout)
                except (TimeoutError, KafkaError, OSError):
                    log.warning("kafka producer sender did not stop")
            connections = getattr(client, "client", None)
            if connections is not None:
                try:
                    await asyncio.wait_for(connections.close(), self._close_timeout)
                except (TimeoutError, KafkaError, OSError):
                    log.warning("kafka producer connections did not close")

    async def __aenter__(self) -> EventProducer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def send(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> DeliveryFuture:
        """Queue one raw record; the returned future resolves when the broker acknowledged it.

        May wait for topic metadata (up to ``request_timeout_ms``) and then raise aiokafka's
        ``KafkaTimeoutError``.
        """
        client = self._producer
        if client is None:
            raise ProducerNotStartedError("EventProducer is not started")
        future: DeliveryFuture = await client.send(topic, value, key=key, headers=list(headers))
        pending = self._pending.setdefault(client, set())
        pending.add(future)
        self._pending_count += 1
        future.add_done_callback(self._settled)
        future.add_done_callback(pending.discard)
        return future

    def _settled(self, _: DeliveryFuture) -> None:
        self._pending_count -= 1

    async def send_and_wait(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes]] = (),
    ) -> Any:
        """Send one raw record and wait for the acknowledgement (aiokafka ``RecordMetadata``)."""
        future = await self.send(topic, value, key=key, headers=headers)
        return await future

    async def send_traced(
        self,
        topic: str,
        value: bytes,
        *,
        key: str | None,
        headers: Mapping[str, str],
        parent: Context | None = None,
    ) -> DeliveryFuture:
        """Queue a record in the trace of ``parent`` (the context the event was created in: the
        outbox stores it at write time), or of the current span.

        The PRODUCER span and the trace headers come from OpenTelemetry's aiokafka
        instrumentation when this process exports traces (any trace headers given are dropped
        first), so the consumer's span becomes a child of that send span, in the same trace.
        """
        values = {k: v for k, v in headers.items() if k not in ("traceparent", "tracestate")}
        token = otel_context.attach(parent) if parent is not None else None
        try:
            return await self.send(
                topic,
                value,
                key=key.encode() if key else None,
                headers=map_to_headers(values),
            )
        finally:
            if token is not None:
                otel_context.detach(token)

    async def publish(
        self,
        topic: str,
        envelope: Envelope,
        *,
        extra_headers: Mapping[str, str] | None = None,
    ) -> Any:
        """Publish one envelope directly (no outbox) and wait for the acknowledgement.

        Key = ``envelope.subject``; headers = envelope attributes + trace context of the current
        span. Only for events that need no atomicity with a database write; domain events go
        through the outbox.
        """
        headers = {**(extra_headers or {}), **envelope_header_map(envelope)}
        future = await self.send_traced(
            topic,
            envelope.SerializeToString(),
            key=envelope.subject or None,
            headers=headers,
        )
        return await future
