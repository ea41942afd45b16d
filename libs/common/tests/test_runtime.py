import asyncio
import os
import signal

import pytest

from mercato_common.runtime import CloseOnStop, run_until_signal, start_all


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
