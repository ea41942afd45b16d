"""A consumer group as one lifecycle part: ``count`` runners, supervised, sharing a dead-letter
producer.

A service that consumes events declares one :class:`ConsumerGroup` per group it is a member of,
with its handler (see :mod:`mercato_common.kafka.consumer` for what a handler must guarantee).
The group

* runs ``count`` :class:`ConsumerRunner` members in tasks (Kafka spreads the partitions over
  them; more than one overlaps the handlers' round trips on different partitions),
* replaces a runner that fails (broker unreachable at start, a fatal error) with a new one
  after a backoff delay, so a broker outage delays consumption instead of ending it,
* owns the dead-letter producer (:attr:`producer`, so saturation metrics can watch it), which
  every runner shares, and
* on :meth:`stop` lets each runner finish its record and commit (bounded by ``grace``), then
  stops the producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry

from mercato_common.kafka.backoff import Backoff
from mercato_common.kafka.connection import KafkaConnection
from mercato_common.kafka.consumer import ConsumerRunner, DeadLetterSink, Handler
from mercato_common.kafka.producer import EventProducer

__all__ = ["ConsumerGroup"]

log = logging.getLogger(__name__)


class ConsumerGroup:
    """``count`` consumer runners of group ``group_id`` on ``topics``, applying ``handler``.

    ``dead_letter_topic`` (a name, or a function of the source topic) parks the records that
    keep failing; without one a failing record stops its runner, which is then restarted (and
    meets the record again). ``wrap_dead_letters`` may wrap the producer the runners dead-letter
    through, e.g. to count what is parked. ``on_stop`` is called first thing at :meth:`stop`, so
    a handler that waits out an outage can give up (its record stays uncommitted).

    ``backoff`` spaces both a runner's attempts at a record and the restarts of a failed runner.
    ``runner_options`` are passed on to every :class:`ConsumerRunner` (``max_poll_records``,
    ``session_timeout_ms``, ``already_processed``, ...).
    """

    def __init__(
        self,
        connection: KafkaConnection,
        *,
        group_id: str,
        topics: Sequence[str],
        handler: Handler,
        dead_letter_topic: str | Callable[[str], str] | None = None,
        count: int = 1,
        max_attempts: int = 5,
        backoff: Backoff | None = None,
        grace: float = 10.0,
        producer: EventProducer | None = None,
        wrap_dead_letters: Callable[[DeadLetterSink], DeadLetterSink] | None = None,
        on_stop: Callable[[], Any] | None = None,
        registry: CollectorRegistry = REGISTRY,
        **runner_options: Any,
    ) -> None:
        if count < 1:
            raise ValueError(f"count must be at least 1, not {count}")
        if not topics:
            raise ValueError("topics must not be empty")
        self._connection = connection
        self.group_id = group_id
        self.topics = tuple(topics)
        self._count = count
        self._grace = grace
        self._on_stop = on_stop
        self._backoff = backoff if backoff is not None else Backoff(initial=0.2, maximum=10.0)
        self.producer: EventProducer | None = None
        sink: DeadLetterSink | None = None
        if dead_letter_topic is not None:
            self.producer = producer if producer is not None else EventProducer(connection)
            sink = wrap_dead_letters(self.producer) if wrap_dead_letters else self.producer
        self._runner_options: dict[str, Any] = {
            "handler": handler,
            "dead_letter_topic": dead_letter_topic,
            "dead_letter_producer": sink,
            "max_attempts": max_attempts,
            "backoff": self._backoff,
            "registry": registry,
            **runner_options,
        }
        self.runners: list[ConsumerRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = asyncio.Event()

    def _new_runner(self) -> ConsumerRunner:
        return ConsumerRunner(
            self._connection, group_id=self.group_id, topics=self.topics, **self._runner_options
        )

    async def start(self) -> None:
        """Start the runners in tasks; nothing waits for the broker (they connect themselves).

        Raises ``ValueError`` for settings a runner refuses (before any task starts).
        """
        self._stopping.clear()
        self.runners = [self._new_runner() for _ in range(self._count)]
        self._tasks = [
            asyncio.create_task(self._supervise(index), name=f"consumer-{self.group_id}-{index}")
            for index in range(self._count)
        ]

    async def _supervise(self, index: int) -> None:
        failures = 0
        runner = self.runners[index]
        while True:
            try:
                if self.producer is not None:
                    # Shared by the runners; start() does nothing once it is connected.
                    await self.producer.start()
                if self._stopping.is_set():
                    return
                await runner.run()
                failures = 0
            except Exception as exc:
                failures += 1
                log.warning(
                    "consumer %s-%d failed (%d in a row): %r", self.group_id, index, failures, exc
                )
            # Wait before the next runner, or end at once when stop() comes meanwhile.
            with contextlib.suppress(TimeoutError):
                delay = self._backoff.delay(max(failures, 1))
                await asyncio.wait_for(self._stopping.wait(), delay)
            if self._stopping.is_set():
                return
            # A stopped runner does not run again: its successor takes its place.
            runner = self.runners[index] = self._new_runner()

    async def stop(self) -> None:
        """Let every runner finish its record and commit (``grace`` seconds), then stop the
        producer; a runner still busy after that is cancelled."""
        self._stopping.set()
        if self._on_stop is not None:
            self._on_stop()
        await asyncio.gather(*(runner.stop(grace=self._grace) for runner in self.runners))
        tasks, self._tasks = self._tasks, []
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self._grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5.0)
        if self.producer is not None:
            await self.producer.stop()
