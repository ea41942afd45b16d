"""Redis round trips with redis.asyncio against the real server: a Lua script via EVAL."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from redis.asyncio import Redis

pytestmark = pytest.mark.integration

# A fixed-window rate limiter, as the gateway's: count the hit, start the window on the first
# one, and answer [allowed (1/0), hits so far, milliseconds left in the window].
RATE_LIMIT = """
local hits = redis.call('INCR', KEYS[1])
if hits == 1 then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
local allowed = 0
if hits <= tonumber(ARGV[1]) then allowed = 1 end
return {allowed, hits, redis.call('PTTL', KEYS[1])}
"""


@pytest_asyncio.fixture(loop_scope="session")
async def client(redis_url: str) -> AsyncIterator[Redis]:
    redis = Redis.from_url(redis_url)
    try:
        yield redis
    finally:
        await redis.aclose()


async def test_eval_lua_script(client: Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}ratelimit:client-1"
    results = [await client.eval(RATE_LIMIT, 1, key, 3, 60_000) for _ in range(4)]
    assert [r[:2] for r in results] == [[1, 1], [1, 2], [1, 3], [0, 4]]
    assert 0 < results[-1][2] <= 60_000

    # The same script by SHA (EVALSHA), as redis-py's Script does it.
    script = client.register_script(RATE_LIMIT)
    other = f"{redis_prefix}ratelimit:client-2"
    assert (await script(keys=[other], args=[3, 60_000]))[:2] == [1, 1]
    assert await client.exists(key, other) == 2


async def test_key_prefix_is_unique_per_test(client: Redis, redis_prefix: str) -> None:
    assert redis_prefix.startswith("test:")
    assert [key async for key in client.scan_iter(match=redis_prefix + "*")] == []
