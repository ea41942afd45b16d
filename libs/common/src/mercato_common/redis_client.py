"""The Redis client every process makes the same way: fail fast, never retry by itself.

Redis is a cache or a rate-limit store here, never the source of truth: a slow or absent Redis
must cost one short timeout, after which the caller falls back (the catalog reads the database,
the gateway limits locally). So: one timeout for connecting and for each command, no retries
and no background health checks; the callers' circuit breakers decide when to try again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from mercato_common.telemetry import instrument_client

__all__ = ["RedisBreaker", "fail_fast_redis"]


def fail_fast_redis(url: str, *, timeout_ms: int) -> Redis:
    """A client of ``url`` (nothing connects until the first command)."""
    instrument_client("redis")
    timeout = timeout_ms / 1000
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


@dataclass
class RedisBreaker:
    """After a failure, Redis is skipped for ``seconds`` (a dead or hung Redis then costs one
    timeout per period, not one per call); says when an outage starts and ends, so that the
    caller logs one line for each."""

    seconds: float
    clock: Callable[[], float] = time.monotonic
    _skip_until: float = field(default=0.0, init=False)
    _down: bool = field(default=False, init=False)

    def allows(self) -> bool:
        """Whether Redis may be tried now."""
        return self.clock() >= self._skip_until

    def failed(self) -> bool:
        """A call failed: skip Redis for a while. True when this starts an outage."""
        self._skip_until = self.clock() + self.seconds
        started, self._down = not self._down, True
        return started

    def succeeded(self) -> bool:
        """A call succeeded. True when this ends an outage."""
        ended, self._down = self._down, False
        return ended
