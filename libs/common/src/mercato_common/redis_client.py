"""The Redis client every process makes the same way: fail fast, never retry by itself.

Redis is a cache or a rate-limit store here, never the source of truth: a slow or absent Redis
must cost one short timeout, after which the caller falls back (the catalog reads the database,
the gateway limits locally). So: one timeout for connecting and for each command, no retries
and no background health checks; the callers' circuit breakers decide when to try again.
"""

from __future__ import annotations

from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

__all__ = ["fail_fast_redis"]


def fail_fast_redis(url: str, *, timeout_ms: int) -> Redis:
    """A client of ``url`` (nothing connects until the first command)."""
    timeout = timeout_ms / 1000
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )
