"""Per-tenant request rate limits: a token bucket of ``rate`` requests/s with ``burst`` capacity.

Implemented as GCRA (the generic cell rate algorithm): one timestamp per tenant, the
"theoretical arrival time" ``tat``. A request at time t is allowed when ``tat − burst·T ≤ t``
(T = 1/rate), and then ``tat ← max(tat, t) + T``; otherwise the caller waits
``tat − burst·T − t`` seconds. Embedded mode keeps the timestamps in memory; distributed mode in
Redis (one Lua script, Redis' own clock), so all API processes share one budget per tenant. A
Redis that cannot be reached lets requests through: limits must not take the API down.
"""

from __future__ import annotations

import threading
import time
from typing import Protocol

from jobs import logs
from jobs.config import Settings

log = logs.get(__name__)


class RateLimiter(Protocol):
    def wait_time(self, tenant: str) -> float:
        """Record one request; 0 if allowed, else the seconds until one would be."""
        ...


class Unlimited:
    def wait_time(self, tenant: str) -> float:
        return 0.0


class LocalRateLimiter:
    """GCRA in process memory (one API process)."""

    def __init__(self, rate: float, burst: int, clock=time.monotonic) -> None:
        self.interval, self.tolerance = 1.0 / rate, burst / rate
        self.clock = clock
        self._tat: dict[str, float] = {}
        self._lock = threading.Lock()

    def wait_time(self, tenant: str) -> float:
        with self._lock:
            now = self.clock()
            tat = max(self._tat.get(tenant, now), now)
            wait = tat + self.interval - self.tolerance - now
            if wait > 0:
                return wait
            self._tat[tenant] = tat + self.interval
            return 0.0


# KEYS[1]: the tenant's key; ARGV: interval T, tolerance burst·T (seconds). Returns the wait as a string.
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval, tolerance = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local wait = tat + interval - tolerance - now
if wait > 0 then return tostring(wait) end
redis.call('SET', KEYS[1], tostring(tat + interval), 'PX', math.ceil((tolerance + interval) * 1000) + 1000)
return '0'
"""


class RedisRateLimiter:
    """GCRA in Redis, shared by every API process."""

    def __init__(self, url: str, rate: float, burst: int, prefix: str = "gif:ratelimit:") -> None:
        import redis

        self.client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
        self.script = self.client.register_script(_GCRA)
        self.interval, self.tolerance, self.prefix = 1.0 / rate, burst / rate, prefix
        self._errors = 0

    def wait_time(self, tenant: str) -> float:
        import redis

        try:
            wait = float(self.script(keys=[self.prefix + tenant], args=[self.interval, self.tolerance]))
        except redis.exceptions.RedisError as exc:
            self._errors += 1
            if self._errors % 100 == 1:
                log.warning("rate_limiter_unavailable", error=f"{type(exc).__name__}: {exc}")
            return 0.0
        return wait


def make_rate_limiter(settings: Settings) -> RateLimiter:
    """Redis-backed in distributed mode (the cache Redis, else the broker), local otherwise."""
    if not settings.rate_limit_per_second:
        return Unlimited()
    url = settings.redis_url or settings.broker_url
    if url:
        return RedisRateLimiter(url, settings.rate_limit_per_second, settings.rate_limit_burst)
    return LocalRateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
