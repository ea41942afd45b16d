"""Rate limits shared by every gateway replica: token buckets in Redis, updated by one Lua script.

A bucket per (route class, client): the verified token's subject, else the client address.
The script reads Redis's own clock (``TIME``), so replicas with skewed clocks share one view; it
refills the bucket, takes up to the asked number of tokens, and returns how many it took, what
is left and, when it took none, how long until a token is back. One round trip, atomic.

Tokens are taken in leases: a process asks for ``lease_size(policy)`` tokens at once (a tenth
of a second of the rate, at most a tenth of the burst, at most ``MAX_LEASE``; one for slow
policies) and spends them locally for at most ``LEASE_SECONDS``, so a busy client costs one
Redis round trip per lease rather than per request. Every request spends a token taken from the
shared bucket, so N replicas together never exceed the limit; a lease's unspent tokens expire
unused (a client spread over N replicas may get up to N x (lease - 1) fewer than the limit).

When Redis fails (error or timeout) the limiter logs it once per outage, counts it in
``gateway_rate_limit_redis_errors_total``, skips Redis for ``breaker_seconds``, and meanwhile
does what ``on_redis_error`` says: ``local`` (default) keeps per-process buckets with the same
policy (each replica then allows the full rate: the total is N replicas x the limit), ``open``
allows everything, ``closed`` refuses with 503.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge
from redis.asyncio import Redis
from redis.exceptions import RedisError

from mercato_common.redis_client import RedisBreaker
from mercato_gateway.settings import RateLimitPolicy

__all__ = ["BUCKET_SCRIPT", "Decision", "RateLimitMetrics", "RateLimiter", "lease_size"]

_log = logging.getLogger("mercato_gateway.ratelimit")

# KEYS[1]: the bucket. ARGV: rate (tokens/s), burst (capacity), tokens wanted.
# Returns {tokens taken (0 to wanted), tokens left (string), microseconds until one is back}.
BUCKET_SCRIPT = """
local now_parts = redis.call('TIME')
local now = tonumber(now_parts[1]) * 1000000 + tonumber(now_parts[2])
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local wanted = tonumber(ARGV[3])
local state = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(state[1])
local ts = tonumber(state[2])
if tokens == nil or ts == nil then
  tokens = burst
  ts = now
end
local elapsed = now - ts
if elapsed < 0 then elapsed = 0 end
tokens = math.min(burst, tokens + elapsed * rate / 1000000)
local taken = math.min(wanted, math.floor(tokens))
local wait = 0
if taken >= 1 then
  tokens = tokens - taken
else
  taken = 0
  wait = math.ceil((1 - tokens) * 1000000 / rate)
end
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens), 'ts', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst * 1000 / rate) + 1000)
return {taken, string.format('%.6f', tokens), wait}
"""


@dataclass(frozen=True, slots=True)
class Decision:
    allowed: bool
    policy_name: str
    limit: int
    remaining: int
    # Seconds until the bucket is full again (RateLimit "t"), and until one request may pass.
    reset_seconds: int
    retry_after: int
    # "redis", "local" (fallback), "open" (no limit applied), "closed" (refused: Redis down).
    source: str = "redis"

    def headers(self, window: float) -> dict[str, str]:
        """IETF httpapi RateLimit headers (draft-ietf-httpapi-ratelimit-headers)."""
        headers = {
            "ratelimit-policy": f'"{self.policy_name}";q={self.limit};w={max(1, round(window))}',
            "ratelimit": f'"{self.policy_name}";r={self.remaining};t={self.reset_seconds}',
        }
        if not self.allowed:
            headers["retry-after"] = str(self.retry_after)
        return headers


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry = REGISTRY) -> None:
        self.decisions = Counter(
            "gateway_rate_limit_decisions_total",
            "Rate-limit decisions, by route class, outcome and backend.",
            ["route_class", "decision", "backend"],
            registry=registry,
        )
        self.redis_errors = Counter(
            "gateway_rate_limit_redis_errors_total",
            "Rate-limit calls to Redis that failed (the fallback applied).",
            registry=registry,
        )
        self.degraded = Gauge(
            "gateway_rate_limit_degraded",
            "1 while Redis is skipped after a failure and the fallback applies.",
            registry=registry,
            multiprocess_mode="max",
        )


def _keep_newest(entries: OrderedDict[str, Any], key: str, value: Any, limit: int) -> None:
    """Store ``value`` as the most recently used entry; drop the least recently used beyond
    ``limit`` (per-client state must not grow with the number of clients ever seen)."""
    entries[key] = value
    entries.move_to_end(key)
    while len(entries) > limit:
        entries.popitem(last=False)


class _LocalBuckets:
    """Per-process token buckets (the fallback), bounded in number (least recently used out)."""

    def __init__(self, clock: Callable[[], float], max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._max = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def take(self, key: str, policy: RateLimitPolicy) -> tuple[bool, float, float]:
        now = self._clock()
        tokens, stamp = self._buckets.pop(key, (float(policy.burst), now))
        tokens = min(float(policy.burst), tokens + max(0.0, now - stamp) * policy.rate)
        wait = 0.0
        allowed = tokens >= 1.0
        if allowed:
            tokens -= 1.0
        else:
            wait = (1.0 - tokens) / policy.rate
        _keep_newest(self._buckets, key, (tokens, now), self._max)
        return allowed, tokens, wait


#: How long leased tokens may be spent locally, and the largest lease.
LEASE_SECONDS = 1.0
MAX_LEASE = 100


def lease_size(policy: RateLimitPolicy) -> int:
    """Tokens taken from Redis at once: 0.1 s of the rate, at most a tenth of the burst."""
    return max(1, min(MAX_LEASE, policy.burst // 10, math.floor(policy.rate / 10)))


@dataclass(slots=True)
class _Lease:
    tokens: int  # still to spend here
    left: float  # what the shared bucket had left when it was taken
    expires: float


class _Leases:
    """Tokens taken from the shared bucket and not yet spent, per bucket key (least recently
    used out beyond ``max_leases``)."""

    def __init__(self, max_leases: int = 100_000) -> None:
        self._max = max_leases
        self._leases: OrderedDict[str, _Lease] = OrderedDict()

    def spend(self, key: str, now: float) -> _Lease | None:
        """One token of the key's lease, if it has one left and still valid."""
        lease = self._leases.get(key)
        if lease is None:
            return None
        if lease.tokens < 1 or now >= lease.expires:
            del self._leases[key]
            return None
        lease.tokens -= 1
        self._leases.move_to_end(key)
        return lease

    def keep(self, key: str, lease: _Lease, now: float) -> None:
        """Keep ``lease``, together with what is left of the key's current one: concurrent
        requests of one client that all missed take a lease each, and none of it is lost."""
        current = self._leases.get(key)
        if current is not None and current.expires > now:
            lease.tokens += current.tokens
        _keep_newest(self._leases, key, lease, self._max)


class RateLimiter:
    def __init__(
        self,
        redis: Redis | None,
        *,
        policies: Mapping[str, RateLimitPolicy],
        prefix: str,
        on_redis_error: Literal["local", "open", "closed"] = "local",
        breaker_seconds: float = 2.0,
        metrics: RateLimitMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._redis = redis
        self._script: Any = redis.register_script(BUCKET_SCRIPT) if redis is not None else None
        self._policies = dict(policies)
        self._prefix = prefix
        self._on_error = on_redis_error
        self._breaker = RedisBreaker(breaker_seconds, clock)
        self._metrics = metrics or RateLimitMetrics(CollectorRegistry())
        self._clock = clock
        self._local = _LocalBuckets(clock)
        self._leases = _Leases()

    def policy(self, route_class: str) -> RateLimitPolicy:
        return self._policies.get(route_class) or self._policies["default"]

    def window(self, route_class: str) -> float:
        policy = self.policy(route_class)
        return policy.burst / policy.rate

    async def check(self, route_class: str, client_key: str) -> Decision:
        policy = self.policy(route_class)
        now = self._clock()
        if self._script is not None and self._breaker.allows():
            bucket = f"{route_class}:{client_key}"
            lease = self._leases.spend(bucket, now)
            if lease is not None:
                return self._decide(route_class, policy, True, lease.left + lease.tokens, 0.0)
            wanted = lease_size(policy)
            try:
                taken, left, wait_us = await self._script(
                    keys=[f"{self._prefix}rl:{bucket}"],
                    args=[repr(policy.rate), policy.burst, wanted],
                )
            except (RedisError, OSError, TimeoutError) as error:
                self._trip(error)
            else:
                if self._breaker.succeeded():
                    self._metrics.degraded.set(0)
                    _log.warning("rate limiting: Redis is back")
                taken, shared_left = int(taken), float(left)
                if taken > 1:
                    lease = _Lease(taken - 1, shared_left, now + LEASE_SECONDS)
                    self._leases.keep(bucket, lease, now)
                return self._decide(
                    route_class,
                    policy,
                    taken >= 1,
                    shared_left + max(0, taken - 1),
                    int(wait_us) / 1e6,
                )
        return self._fallback(route_class, client_key, policy)

    def _trip(self, error: BaseException) -> None:
        self._metrics.redis_errors.inc()
        if self._breaker.failed():
            self._metrics.degraded.set(1)
            _log.warning(
                "rate limiting: Redis failed; applying the fallback",
                extra={"fallback": self._on_error, "error_type": type(error).__name__},
            )

    def _fallback(self, route_class: str, client_key: str, policy: RateLimitPolicy) -> Decision:
        if self._on_error == "local" or self._script is None:
            allowed, left, wait = self._local.take(f"{route_class}:{client_key}", policy)
            return self._decide(route_class, policy, allowed, left, wait, source="local")
        allowed = self._on_error == "open"
        self._metrics.decisions.labels(
            route_class, "allowed" if allowed else "limited", self._on_error
        ).inc()
        return Decision(
            allowed=allowed,
            policy_name=route_class,
            limit=policy.burst,
            remaining=policy.burst if allowed else 0,
            reset_seconds=0,
            retry_after=max(1, math.ceil(self._breaker.seconds)),
            source=self._on_error,
        )

    def _decide(
        self,
        route_class: str,
        policy: RateLimitPolicy,
        allowed: bool,
        left: float,
        wait: float,
        *,
        source: str = "redis",
    ) -> Decision:
        self._metrics.decisions.labels(
            route_class, "allowed" if allowed else "limited", source
        ).inc()
        return Decision(
            allowed=allowed,
            policy_name=route_class,
            limit=policy.burst,
            remaining=max(0, math.floor(left)),
            reset_seconds=max(0, math.ceil((policy.burst - left) / policy.rate)),
            retry_after=max(1, math.ceil(wait)),
            source=source,
        )

    async def ping(self) -> bool:
        if self._redis is None:
            return False
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError, TimeoutError):
            return False
