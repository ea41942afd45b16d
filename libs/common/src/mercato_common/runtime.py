"""Process lifecycle shared by every service: start parts in order, stop them in reverse.

A service's ``app.py`` builds its parts (stores, clients, the gRPC server, the
outbox relay, consumers) and hands them to :func:`run_until_signal`, which
starts each, waits for SIGTERM or SIGINT, and stops them in reverse order so
the server drains before the stores it uses are closed.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

__all__ = ["CloseOnStop", "Lifecycle", "run_until_signal", "start_all", "stop_all"]

_log = logging.getLogger("mercato.runtime")


class Lifecycle(Protocol):
    async def start(self) -> Any: ...

    async def stop(self) -> Any: ...


class CloseOnStop:
    """A part that only closes a client on stop (a channel, a Redis client); None is skipped.

    Nothing happens at start: such clients connect lazily, and a dependency that is down at
    start must not keep the service from starting.
    """

    def __init__(self, close: Callable[[], Awaitable[Any]] | None) -> None:
        self._close = close

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        if self._close is not None:
            await self._close()


async def start_all(parts: Sequence[Lifecycle]) -> list[Lifecycle]:
    """Start ``parts`` in order; if one fails, stop those already started and re-raise."""
    started: list[Lifecycle] = []
    try:
        for part in parts:
            await part.start()
            started.append(part)
    except BaseException:
        await stop_all(started)
        raise
    return started


async def stop_all(parts: Sequence[Lifecycle]) -> None:
    """Stop ``parts`` in reverse order; one failing to stop does not keep the others running."""
    for part in reversed(parts):
        try:
            await part.stop()
        except Exception:
            _log.exception("error while stopping %s", type(part).__name__)


async def run_until_signal(
    parts: Sequence[Lifecycle], *, stop_event: asyncio.Event | None = None
) -> None:
    """Start ``parts``, run until SIGTERM/SIGINT (or ``stop_event``), then stop them."""
    stop = stop_event or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        started = await start_all(parts)
        _log.info("started", extra={"parts": [type(p).__name__ for p in started]})
        await stop.wait()
        _log.info("stopping")
        await stop_all(started)
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)
