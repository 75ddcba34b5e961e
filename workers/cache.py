"""The engine cache (``gif.cache``) for the distributed service: a Redis index over the blob store.

:class:`RedisCache` implements :class:`gif.cache.Cache`. Each entry has a Redis hash under
``<namespace><kind>:<sha256>``:

* a value of at most ``max_inline_bytes`` (safetensors bytes) is stored in the hash itself
  (field ``data``): gradients of small models, selections, metrics;
* a bigger value (curvature fits, gradients of big models) is written to the content-addressed
  :class:`jobs.blobs.BlobStore`, and the hash holds only its index: ``sha256``, ``size``,
  ``meta`` (docs/service-design.md, "No big values in Redis").

Every entry expires ``ttl_seconds`` after its last use (a hit renews it). An index whose blob is
missing or has the wrong size (deleted, half-copied) counts as a miss and is removed. The
per-key lock is a redis-py :class:`redis.lock.Lock` (``SET NX PX`` + token) renewed by a
background thread while the value is computed, so a second worker waits instead of computing
the same entry; if the holder dies, the lock lapses after ``lock_timeout`` seconds.

Blobs outlive the Redis keys that pointed at them; :meth:`RedisCache.sweep` deletes the blobs of
entries that expired (the service should run it periodically). Cache blobs carry their key in
the safetensors header, so they never coincide with an uploaded artifact's bytes.

:func:`make_cache` picks the backend from the settings: Redis when ``GIF_REDIS_URL`` is set,
else a :class:`gif.cache.DiskCache` under ``GIF_HOME/cache`` (embedded mode).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from gif.cache import BaseCache, Cache, DiskCache, Entry, check_key, decode, encode, read_file
from jobs.blobs import BlobStore
from jobs.errors import BlobCorrupted

log = logging.getLogger(__name__)

MIB = 1024 * 1024
#: Default lifetime of an unused entry.
DEFAULT_TTL_SECONDS = 7 * 24 * 3600
#: Default lifetime of a compute lock whose holder stopped renewing it (a dead worker).
DEFAULT_LOCK_TIMEOUT = 120.0


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (OSError, RedisError)


class RedisCache(BaseCache):
    """:class:`gif.cache.Cache` over Redis (index, small values, locks) and a blob store (big values).

    Args:
        client: a ``redis.Redis`` with ``decode_responses=False`` (values are bytes).
        blobs: where values above ``max_inline_bytes`` go.
        max_inline_bytes: the largest serialised value kept inside Redis.
        ttl_seconds: an entry expires this long after it was last stored or read.
        namespace: prefix of every key this cache writes.
        lock_timeout: seconds a compute lock lives without renewal (renewed every third of it
            while the holder computes).
        lock_wait: the longest a worker waits for another's computation before computing the
            entry itself (None: as long as the lock is held and renewed).
    """

    def __init__(
        self,
        client: Any,
        blobs: BlobStore,
        *,
        max_inline_bytes: int = MIB,
        ttl_seconds: int = DEFAULT_TTL_SECONDS,
        namespace: str = "gif:cache:",
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        lock_wait: float | None = None,
    ) -> None:
        kwargs = getattr(getattr(client, "connection_pool", None), "connection_kwargs", {})
        if kwargs.get("decode_responses"):
            raise ValueError("RedisCache needs a client with decode_responses=False (values are bytes)")
        if ttl_seconds < 1 or max_inline_bytes < 0 or lock_timeout <= 0:
            raise ValueError("ttl_seconds >= 1, max_inline_bytes >= 0 and lock_timeout > 0 are required")
        self.client, self.blobs = client, blobs
        self.max_inline_bytes, self.ttl_seconds = int(max_inline_bytes), int(ttl_seconds)
        self.namespace, self.lock_timeout, self.lock_wait = namespace, float(lock_timeout), lock_wait
        self.unavailable = _redis_errors()

    # -- names -------------------------------------------------------------------------------------

    def index_key(self, key: str) -> str:
        check_key(key)
        return f"{self.namespace}{key}"

    def lock_key(self, key: str) -> str:
        check_key(key)
        return f"{self.namespace}lock:{key}"

    @property
    def blob_set(self) -> str:
        """Sorted set: blob sha256 → the latest expiry (unix time) of an entry stored in it."""
        return f"{self.namespace}blobs"

    # -- Cache -------------------------------------------------------------------------------------

    def get(self, key: str, *, device: torch.device | str | None = None) -> Entry | None:
        name = self.index_key(key)
        fields = self.client.hgetall(name)
        if not fields:
            return None
        if b"data" in fields:
            tensors, meta = decode(fields[b"data"], device)
        else:
            sha256, size = fields[b"sha256"].decode(), int(fields[b"size"])
            path: Path | None
            try:
                path = self.blobs.fetch(sha256)
                found = path.stat().st_size
            except (FileNotFoundError, BlobCorrupted):
                path, found = None, -1
            if path is None or found != size:
                log.warning("cache entry %s points at a missing or partial blob %s; dropping it", key, sha256)
                self.client.delete(name)
                return None
            tensors, meta = read_file(path, device)
            self.client.zadd(self.blob_set, {sha256: time.time() + self.ttl_seconds}, gt=True)
        self.client.expire(name, self.ttl_seconds)  # used: keep it
        return Entry(key, tensors, meta)

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
        name = self.index_key(key)
        data = encode(tensors, meta, key=key)
        pipe = self.client.pipeline(transaction=True)
        pipe.delete(name)
        if len(data) <= self.max_inline_bytes:
            pipe.hset(name, mapping={"data": data, "size": len(data)})
        else:
            staged = self.blobs.put([data])
            pipe.hset(
                name,
                mapping={
                    "sha256": staged.sha256,
                    "size": staged.size,
                    "meta": json.dumps(dict(meta or {}), sort_keys=True),
                },
            )
            pipe.zadd(self.blob_set, {staged.sha256: time.time() + self.ttl_seconds}, gt=True)
        pipe.expire(name, self.ttl_seconds)
        pipe.execute()

    def delete(self, key: str) -> None:
        self.client.delete(self.index_key(key))

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        lock = self.client.lock(
            self.lock_key(key),
            timeout=self.lock_timeout,
            blocking=True,
            blocking_timeout=self.lock_wait,
            thread_local=False,
        )
        if not lock.acquire():
            log.warning("waited %ss for the computation of %s; computing it here too", self.lock_wait, key)
            yield
            return
        stop = threading.Event()
        renewer = threading.Thread(
            target=_renew,
            args=(lock, self.lock_timeout / 3, stop),
            daemon=True,
            name=f"cache-lock-{key[:20]}",
        )
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            with contextlib.suppress(*self.unavailable):
                lock.release()

    # -- maintenance -------------------------------------------------------------------------------

    def sweep(self, *, now: float | None = None) -> int:
        """Delete the blobs of entries that expired; returns how many were deleted.

        A blob's score is the latest expiry of any entry stored in it (renewed on hits), so
        a blob still in use is never deleted.
        """
        now = time.time() if now is None else now
        deleted = 0
        for raw in self.client.zrangebyscore(self.blob_set, "-inf", now):
            sha256 = raw.decode()
            if self.client.eval(_ZREM_IF_EXPIRED, 1, self.blob_set, sha256, repr(now)):
                self.blobs.delete(sha256)
                deleted += 1
        return deleted


#: Remove a blob from the set only if no entry renewed its expiry since it was listed.
_ZREM_IF_EXPIRED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


def _renew(lock: Any, every: float, stop: threading.Event) -> None:
    from redis.exceptions import LockError, RedisError

    while not stop.wait(every):
        try:
            lock.reacquire()
        except (LockError, RedisError, OSError) as exc:
            log.warning("lost the cache compute lock %s: %s", lock.name, exc)
            return


def make_cache(redis_url: str | None, home: Path, blobs: BlobStore | None = None, **options: Any) -> Cache:
    """The cache a worker passes to ``gif.remove`` / ``gif.relabel``.

    ``redis_url`` set (``GIF_REDIS_URL``, distributed mode): a :class:`RedisCache` whose big
    values go to ``blobs``; ``options`` are its keyword arguments. Unset (embedded mode): a
    :class:`gif.cache.DiskCache` under ``home / "cache"`` (``options`` may give ``max_bytes``).
    """
    if redis_url:
        import redis

        if blobs is None:
            raise ValueError("a Redis cache needs the blob store for its big values")
        # short timeouts: the cache is an optimisation, a worker cut off from it must not wait long
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
        return RedisCache(client, blobs, **options)
    return DiskCache(Path(home) / "cache", **options)
