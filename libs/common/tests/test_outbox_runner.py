"""RelayRunner: the outbox relays of a service as one lifecycle part."""

from __future__ import annotations

import asyncio
from typing import Any

from mercato_common.outbox import RelayRunner


class FakeRelay:
    def __init__(self, name: str, *, ignore_stop: bool = False) -> None:
        self.name = name
        self.ignore_stop = ignore_stop
        self.running = asyncio.Event()
        self._stopping = asyncio.Event()
        self._finished = asyncio.Event()
        self.stopped_with: float | None = None
        self.woken = 0
        self.cancelled = False

    async def run(self) -> None:
        self.running.set()
        try:
            await self._stopping.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        finally:
            self._finished.set()

    async def stop(self, grace: float = 30.0) -> None:
        self.stopped_with = grace
        if not self.ignore_stop:  # like OutboxRelay.stop: the batch ends, then run() returns
            self._stopping.set()
            await self._finished.wait()

    def wake(self) -> None:
        self.woken += 1


class FakeProducer:
    def __init__(self) -> None:
        self.stopped = 0

    async def stop(self) -> None:
        self.stopped += 1


def _runner(producer: FakeProducer, relays: Any, **options: Any) -> RelayRunner[Any]:
    return RelayRunner(producer, relays, **options)  # type: ignore[arg-type]


async def test_runs_every_relay_and_stops_them_then_the_producer() -> None:
    producer = FakeProducer()
    relays = [FakeRelay("products"), FakeRelay("reservations")]
    runner = _runner(producer, relays, grace=5.0)
    assert runner.relays == relays
    await runner.start()
    await asyncio.wait_for(asyncio.gather(*(r.running.wait() for r in relays)), 1)
    runner.wake()
    assert [r.woken for r in relays] == [1, 1]
    runner.wake("reservations")  # a write to one collection wakes only its relay
    assert [r.woken for r in relays] == [1, 2]
    await runner.stop()
    assert [r.stopped_with for r in relays] == [5.0, 5.0]
    assert not any(r.cancelled for r in relays)
    assert producer.stopped == 1


async def test_a_factory_is_called_at_start_and_a_stuck_relay_is_cancelled() -> None:
    producer = FakeProducer()
    made: list[FakeRelay] = []

    def make() -> list[FakeRelay]:
        made.append(FakeRelay("outbox", ignore_stop=True))
        return made

    runner = _runner(producer, make)
    assert runner.relay is None
    assert made == []
    await runner.start()
    assert runner.relay is made[0]
    await asyncio.wait_for(made[0].running.wait(), 1)
    await runner.stop(grace=0.1)
    assert made[0].stopped_with == 0.1
    assert made[0].cancelled
    assert producer.stopped == 1


async def test_stop_without_start_only_stops_the_producer() -> None:
    producer = FakeProducer()
    relay = FakeRelay("outbox")
    runner = _runner(producer, [relay])
    await runner.stop()
    assert relay.stopped_with is None
    assert producer.stopped == 1
