"""Redis read cache of products: cache-aside, invalidated by every write, optional at run time.

Keys ``<prefix>product:<SKU>`` hold either a cached product or an invalidation floor:

* ``P<version:20 digits><serialized Product>``: the product at that document version;
* ``F<version:20 digits>``: "written at this version": readers must not store anything older.

Reads: GET; a ``P`` value is a hit, anything else a miss (read the database, then *fill*).
Writes: after the database write, *invalidate* with the document's new version. Fill and
invalidate go through one Lua script that never lets a key go back to an older version, so a
slow reader that loaded a product before a write cannot put that stale copy back after the
write's invalidation (the classic cache-aside race).

Redis is optional at run time: every call has a short timeout, and after a failure a circuit
breaker skips Redis for ``breaker_seconds``, so a dead or hung Redis costs at most one timeout
per breaker period, not one per read. Invalidations that could not be delivered are retried
once Redis answers again (bounded). Entries also expire after ``ttl_seconds``, which bounds the
staleness left by an invalidation lost for good (Redis unreachable, process restarted).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mercato_common.redis_client import RedisBreaker

__all__ = ["CacheMetrics", "ProductCache"]

log = logging.getLogger("mercato_catalog.cache")

_SET_IF_NEWER = """
local current = redis.call('GET', KEYS[1])
if current then
  local current_version = tonumber(string.sub(current, 2, 21))
  local version = tonumber(ARGV[1])
  if current_version ~= nil then
    if current_version > version then return 0 end
    if current_version == version and string.sub(current, 1, 1) == 'P' then return 0 end
  end
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""

_MAX_PENDING = 10_000


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.lookups = Counter(
            "mercato_catalog_cache_lookups",
            "Product cache lookups by result (hit, miss, bypass: Redis skipped or failing).",
            ["result"],
            registry=registry,
        )
        self.errors = Counter(
            "mercato_catalog_cache_errors",
            "Redis calls of the product cache that failed or timed out, by operation.",
            ["operation"],
            registry=registry,
        )
        # Every known series from the start, at 0: a dashboard shows 0, not "no data".
        for result in ("hit", "miss", "bypass"):
            self.lookups.labels(result)
        for operation in ("get", "fill", "invalidate"):
            self.errors.labels(operation)


def _version(version: int) -> str:
    return f"{version:020d}"


class ProductCache:
    """The product read cache; ``redis=None`` disables it (every read goes to MongoDB)."""

    def __init__(
        self,
        redis: Redis | None,
        *,
        prefix: str = "mercato:catalog:",
        ttl_seconds: float = 60.0,
        breaker_seconds: float = 2.0,
        metrics: CacheMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._ttl_ms = int(ttl_seconds * 1000)
        self._breaker = RedisBreaker(breaker_seconds, clock)
        self._metrics = metrics
        self._pending: dict[str, int] = {}
        self._script: Any = redis.register_script(_SET_IF_NEWER) if redis is not None else None
        self._flushing = False

    @property
    def enabled(self) -> bool:
        return self._redis is not None

    def key(self, sku: str) -> str:
        return f"{self._prefix}product:{sku}"

    def _available(self) -> bool:
        return self._redis is not None and self._breaker.allows()

    def _failed(self, operation: str, exc: BaseException) -> None:
        if self._breaker.failed():
            log.warning("product cache: redis %s failed, bypassing it: %r", operation, exc)
        if self._metrics is not None:
            self._metrics.errors.labels(operation).inc()

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.lookups.labels(result).inc()

    async def get(self, sku: str) -> bytes | None:
        """The cached serialized product, or None (miss, or Redis unavailable)."""
        if not self._available() or self._redis is None:
            self._count("bypass")
            return None
        if self._pending and not self._flushing:
            # Invalidations missed while Redis was away go first: what it kept (or reloaded
            # from disk) may be older than what MongoDB has now.
            await self._flush_pending()
            if not self._available():
                self._count("bypass")
                return None
        try:
            value = await self._redis.get(self.key(sku))
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("get", exc)
            self._count("bypass")
            return None
        self._breaker.succeeded()
        if isinstance(value, bytes) and value[:1] == b"P" and len(value) >= 21:
            self._count("hit")
            return value[21:]
        self._count("miss")
        return None

    async def fill(self, sku: str, version: int, payload: bytes) -> None:
        """Store a product read from the database (unless a newer write was seen)."""
        if not self._available():
            return
        value = b"P" + _version(version).encode() + payload
        try:
            await self._script(keys=[self.key(sku)], args=[version, value, self._ttl_ms])
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("fill", exc)
        else:
            self._breaker.succeeded()

    async def invalidate(self, sku: str, version: int) -> None:
        """After a write at ``version``: drop the cached copy and refuse older ones."""
        if self._redis is None:
            return
        if not self._available():
            self._remember(sku, version)
            return
        try:
            await self._set_floor(sku, version)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("invalidate", exc)
            self._remember(sku, version)
        else:
            self._breaker.succeeded()

    async def _set_floor(self, sku: str, version: int) -> None:
        value = b"F" + _version(version).encode()
        await self._script(keys=[self.key(sku)], args=[version, value, self._ttl_ms])

    def _remember(self, sku: str, version: int) -> None:
        if len(self._pending) >= _MAX_PENDING and sku not in self._pending:
            log.warning("product cache: too many undelivered invalidations; dropping %s", sku)
            return
        self._pending[sku] = max(version, self._pending.get(sku, 0))

    async def _flush_pending(self) -> None:
        self._flushing = True
        try:
            while self._pending and self._available():
                sku, version = next(iter(self._pending.items()))
                try:
                    await self._set_floor(sku, version)
                except (TimeoutError, RedisError, OSError) as exc:
                    self._failed("invalidate", exc)
                    return
                if self._pending.get(sku) == version:
                    del self._pending[sku]
        finally:
            self._flushing = False

    @property
    def pending_invalidations(self) -> int:
        return len(self._pending)
