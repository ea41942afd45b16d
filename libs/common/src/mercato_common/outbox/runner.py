"""The outbox relays of a service as one lifecycle part."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Generic, TypeVar

from mercato_common.kafka.producer import EventProducer
from mercato_common.outbox._base import OutboxRelay

__all__ = ["RelayRunner"]

R = TypeVar("R", bound=OutboxRelay)


class RelayRunner(Generic[R]):
    """Runs outbox relays in tasks on one producer; a lifecycle part.

    ``relays`` is the relays, or a function that makes them, called at :meth:`start` (once the
    database pool they read exists). :meth:`stop` lets each relay finish its batch (bounded by
    ``grace`` seconds), cancels what is still running, then stops the producer. The relays
    connect (and reconnect) the producer themselves: a broker that is down at start delays the
    events, not the service.
    """

    def __init__(
        self,
        producer: EventProducer,
        relays: Sequence[R] | Callable[[], Sequence[R]],
        *,
        grace: float = 10.0,
    ) -> None:
        self._producer = producer
        self._make_relays: Callable[[], Sequence[R]] | None = None
        self.relays: list[R] = []
        if callable(relays):
            self._make_relays = relays
        else:
            self.relays = list(relays)
        self._grace = grace
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def relay(self) -> R | None:
        """The first relay (the only one, for most services); None before a lazy start."""
        return self.relays[0] if self.relays else None

    async def start(self) -> None:
        if self._make_relays is not None:
            self.relays = list(self._make_relays())
        self._tasks = [
            asyncio.create_task(relay.run(), name=f"outbox-{relay.name}") for relay in self.relays
        ]

    def wake(self, name: str | None = None) -> None:
        """Ask the relay called ``name`` (every relay: None) to look for events now instead of
        at its next poll."""
        for relay in self.relays:
            if name is None or relay.name == name:
                relay.wake()

    async def stop(self, grace: float | None = None) -> None:
        grace = self._grace if grace is None else grace
        tasks, self._tasks = self._tasks, []
        if tasks:
            for relay in self.relays:
                await relay.stop(grace)
            for task in tasks:
                if not task.done():
                    task.cancel()
            done, _ = await asyncio.wait(tasks, timeout=grace)
            for task in done:  # retrieve the outcome so that nothing is logged as unretrieved
                if not task.cancelled():
                    task.exception()
        await self._producer.stop()
