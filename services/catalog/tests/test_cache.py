"""The product cache against an in-memory Redis stand-in: versions, breaker, pending flush."""

from __future__ import annotations

from typing import Any

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from mercato_catalog.cache import ProductCache


class FakeRedis:
    """GET and the cache's one Lua script, evaluated in Python."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.down = False
        self.calls = 0

    def register_script(self, source: str) -> Any:
        async def script(keys: list[str], args: list[Any]) -> int:
            self._check()
            key, (version, value, _ttl) = keys[0], args
            current = self.data.get(key)
            if current is not None:
                current_version = int(current[1:21])
                if current_version > version:
                    return 0
                if current_version == version and current[:1] == b"P":
                    return 0
            self.data[key] = value
            return 1

        return script

    def _check(self) -> None:
        self.calls += 1
        if self.down:
            raise RedisConnectionError("down")

    async def get(self, key: str) -> bytes | None:
        self._check()
        return self.data.get(key)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def setup() -> tuple[ProductCache, FakeRedis, Clock]:
    redis, clock = FakeRedis(), Clock()
    cache = ProductCache(redis, prefix="t:", breaker_seconds=2.0, clock=clock)  # type: ignore[arg-type]
    return cache, redis, clock


async def test_fill_then_hit(setup: tuple[ProductCache, FakeRedis, Clock]) -> None:
    cache, _, _ = setup
    assert await cache.get("A-1") is None
    await cache.fill("A-1", 3, b"v3")
    assert await cache.get("A-1") == b"v3"


async def test_invalidation_refuses_older_fills(
    setup: tuple[ProductCache, FakeRedis, Clock],
) -> None:
    cache, _, _ = setup
    await cache.fill("A-1", 3, b"v3")
    await cache.invalidate("A-1", 4)
    assert await cache.get("A-1") is None
    await cache.fill("A-1", 3, b"stale")  # a slow reader that loaded before the write
    assert await cache.get("A-1") is None
    await cache.fill("A-1", 4, b"v4")
    assert await cache.get("A-1") == b"v4"
    await cache.fill("A-1", 4, b"again")  # same version: keeps the first copy
    assert await cache.get("A-1") == b"v4"


async def test_breaker_skips_a_dead_redis(setup: tuple[ProductCache, FakeRedis, Clock]) -> None:
    cache, redis, clock = setup
    redis.down = True
    assert await cache.get("A-1") is None
    calls = redis.calls
    for _ in range(10):
        assert await cache.get("A-1") is None
    assert redis.calls == calls  # breaker open: no further attempts
    clock.now = 2.5
    assert await cache.get("A-1") is None
    assert redis.calls == calls + 1


async def test_missed_invalidations_are_delivered_before_reads(
    setup: tuple[ProductCache, FakeRedis, Clock],
) -> None:
    cache, redis, clock = setup
    await cache.fill("A-1", 1, b"v1")
    redis.down = True
    await cache.invalidate("A-1", 2)
    assert cache.pending_invalidations == 1
    redis.down = False
    clock.now = 5.0
    # Redis came back holding the old copy: the pending invalidation wins.
    assert await cache.get("A-1") is None
    assert cache.pending_invalidations == 0


async def test_disabled_cache() -> None:
    cache = ProductCache(None)
    assert not cache.enabled
    assert await cache.get("A-1") is None
    await cache.fill("A-1", 1, b"x")
    await cache.invalidate("A-1", 2)
