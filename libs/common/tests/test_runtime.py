import asyncio
import gc
import itertools
import logging
import os
import signal
import time
from collections.abc import Callable

import pytest

from mercato_common.runtime import CloseOnStop, Periodic, run_until_signal, start_all


class Part:
    def __init__(self, name: str, log: list[str], fail: bool = False) -> None:
        self.name, self.log, self.fail = name, log, fail

    async def start(self) -> None:
        if self.fail:
            raise RuntimeError(f"{self.name} cannot start")
        self.log.append(f"start {self.name}")

    async def stop(self) -> None:
        self.log.append(f"stop {self.name}")


async def test_stops_in_reverse_order_on_sigterm() -> None:
    log: list[str] = []
    running = asyncio.create_task(run_until_signal([Part("store", log), Part("server", log)]))
    for _ in range(100):
        if len(log) == 2:
            break
        await asyncio.sleep(0.01)
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(running, 5)
    assert log == ["start store", "start server", "stop server", "stop store"]


async def test_what_started_is_left_out_of_full_collections_until_stop() -> None:
    """The objects alive once the parts started are frozen while they run, and given back to
    the collector when they stop."""
    frozen_while_running: list[int] = []

    class Probe(Part):
        async def stop(self) -> None:
            frozen_while_running.append(gc.get_freeze_count())
            await super().stop()

    stop = asyncio.Event()
    running = asyncio.create_task(run_until_signal([Probe("server", [])], stop_event=stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(running, 5)
    assert frozen_while_running[0] > 1000  # the modules and objects this process holds
    assert gc.get_freeze_count() == 0


async def test_a_failed_start_stops_what_already_started() -> None:
    log: list[str] = []
    with pytest.raises(RuntimeError, match="relay cannot start"):
        await start_all([Part("store", log), Part("relay", log, fail=True), Part("server", log)])
    assert log == ["start store", "stop store"]


async def test_close_on_stop_closes_only_at_stop_and_skips_none() -> None:
    log: list[str] = []

    async def close() -> None:
        log.append("closed")

    part = CloseOnStop(close)
    await part.start()
    assert log == []
    await part.stop()
    assert log == ["closed"]
    await CloseOnStop(None).stop()  # nothing to close


async def _until(condition: Callable[[], object], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


async def test_periodic_ticks_repeat_until_stopped() -> None:
    ticks: list[float] = []

    async def tick() -> None:
        ticks.append(time.monotonic())

    part = Periodic("ticker", tick, interval=0.02)
    await part.start()
    assert part.running
    await _until(lambda: len(ticks) >= 3)
    await part.stop()
    assert not part.running
    assert all(b - a >= 0.019 for a, b in itertools.pairwise(ticks))
    count = len(ticks)
    await asyncio.sleep(0.05)
    assert len(ticks) == count  # nothing runs after stop


async def test_periodic_not_immediate_waits_one_interval_first() -> None:
    ticks: list[float] = []

    async def tick() -> None:
        ticks.append(time.monotonic())

    part = Periodic("delayed", tick, interval=0.1, immediate=False)
    started = time.monotonic()
    await part.start()
    await _until(lambda: ticks)
    await part.stop()
    assert ticks[0] - started >= 0.09


async def test_periodic_logs_a_failed_tick_and_goes_on(caplog: pytest.LogCaptureFixture) -> None:
    calls = 0

    async def tick() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom")

    logger = logging.getLogger("test.periodic")
    part = Periodic("flaky-part", tick, interval=0.01, logger=logger)
    with caplog.at_level(logging.WARNING, logger="test.periodic"):
        await part.start()
        await _until(lambda: calls >= 3)
        await part.stop()
    [record] = [r for r in caplog.records if r.name == "test.periodic"]
    assert record.levelno == logging.WARNING
    assert "flaky-part" in record.getMessage()
    assert "boom" in record.getMessage()


async def test_periodic_stop_wakes_a_waiting_loop_at_once() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        ticks += 1

    part = Periodic("sleeper", tick, interval=3600, grace=30)
    await part.start()
    await _until(lambda: ticks == 1)  # immediate (the default): the first tick runs at start
    task = part._task
    assert task is not None
    started = time.monotonic()
    await asyncio.wait_for(part.stop(), 1.0)
    assert time.monotonic() - started < 0.5
    assert task.done()
    assert not task.cancelled()  # the loop ended by itself, not by cancel
    assert ticks == 1


async def test_periodic_wake_runs_the_next_tick_now_even_when_called_during_a_tick() -> None:
    ticks = 0
    release = asyncio.Event()

    async def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == 2:
            await release.wait()

    part = Periodic("woken", tick, interval=3600)
    await part.start()
    await _until(lambda: ticks == 1)
    part.wake()  # the loop waits: the second tick runs at once
    await _until(lambda: ticks == 2)
    part.wake()  # during the second tick: the third follows it without a pause
    release.set()
    await _until(lambda: ticks == 3)
    await asyncio.sleep(0.05)
    assert ticks == 3  # and then the interval holds again
    await part.stop()


async def test_periodic_reads_its_interval_at_each_pause() -> None:
    ticks = 0

    async def tick() -> None:
        nonlocal ticks
        ticks += 1
        part.interval = 3600 if ticks >= 3 else 0.01

    part = Periodic("slowing", tick, interval=3600)
    await part.start()
    await _until(lambda: ticks == 3)
    await asyncio.sleep(0.1)
    assert ticks == 3
    await part.stop()


async def test_periodic_stop_lets_a_tick_finish_within_the_grace() -> None:
    finished = asyncio.Event()
    running = asyncio.Event()

    async def tick() -> None:
        running.set()
        await asyncio.sleep(0.05)
        finished.set()

    part = Periodic("short-tick", tick, interval=3600, grace=5)
    await part.start()
    await running.wait()
    await part.stop()
    assert finished.is_set()


async def test_periodic_stop_cancels_and_awaits_a_tick_past_the_grace() -> None:
    running = asyncio.Event()
    log: list[str] = []

    async def tick() -> None:
        running.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # cleanup that takes a moment: stop must wait for it
            log.append("cancelled")
            raise

    part = Periodic("slow-tick", tick, interval=3600, grace=0.05)
    await part.start()
    await running.wait()
    task = part._task
    assert task is not None
    started = time.monotonic()
    await asyncio.wait_for(part.stop(), 2.0)
    assert time.monotonic() - started >= 0.05
    assert log == ["cancelled"]
    assert task.cancelled()
    await part.stop()  # stopping again is a no-op


def test_periodic_rejects_a_non_positive_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        Periodic("never", CloseOnStop(None).start, interval=0)
