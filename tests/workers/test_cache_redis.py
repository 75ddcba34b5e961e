"""workers.cache.RedisCache against a private redis-server: inline and blob-backed values,
dangling indexes, TTLs, compute locks (renewed, lapsing, bounded waits), and cached edits."""

from __future__ import annotations

import secrets
import threading
import time

import pytest
import torch
from torch import nn

import gif
from gif.cache import DiskCache, make_key
from jobs.blobs import BlobStore
from tests.stack import RedisServer, free_port
from workers.cache import RedisCache, make_cache

redis = pytest.importorskip("redis")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    try:
        yield server.url
    finally:
        server.kill()


@pytest.fixture
def blobs(tmp_path):
    return BlobStore(tmp_path / "blobs")


@pytest.fixture
def make(redis_url, blobs):
    """RedisCache factory: every call is a separate client (as in separate workers), all in one
    namespace private to the test."""
    namespace = f"test:{secrets.token_hex(4)}:"
    clients = []

    def build(**kwargs):
        client = redis.Redis.from_url(redis_url)
        clients.append(client)
        return RedisCache(client, blobs, namespace=namespace, **kwargs)

    yield build
    for c in clients:
        c.close()


def blob_files(blobs: BlobStore) -> list:
    return [p for p in (blobs.root / "sha256").rglob("*") if p.is_file()]


def test_small_values_live_in_redis(make, blobs):
    cache = make()
    key = make_key("selection", {"a": 1})
    tensors, meta = {"idx": torch.arange(10), "f": torch.randn(3, dtype=torch.float64)}, {"n": 10, "x": 0.1}
    cache.put(key, tensors, meta)
    fields = cache.client.hgetall(cache.index_key(key))
    assert b"data" in fields and b"sha256" not in fields
    assert not blob_files(blobs)
    entry = make().get(key)  # another client: another worker
    assert entry.meta == meta and all(torch.equal(entry.tensors[k], v) for k, v in tensors.items())


def test_big_values_go_to_the_blob_store_with_an_index(make, blobs):
    cache = make(max_inline_bytes=1024)
    key = make_key("lowrank", {"b": 2})
    value = {"eigenvectors": torch.randn(4, 1000)}
    cache.put(key, value, {"hvps": 148})
    fields = cache.client.hgetall(cache.index_key(key))
    assert b"data" not in fields and int(fields[b"size"]) > 16_000
    sha256 = fields[b"sha256"].decode()
    assert blobs.path(sha256).stat().st_size == int(fields[b"size"])
    assert fields[b"meta"] == b'{"hvps": 148}'
    assert blob_files(blobs) == [blobs.path(sha256)]
    entry = make(max_inline_bytes=1024).get(key)
    assert torch.equal(entry.tensors["eigenvectors"], value["eigenvectors"]) and entry.meta == {"hvps": 148}


def test_the_inline_cap_is_inclusive_of_the_serialised_size(make, blobs):
    from gif.cache import encode

    key = make_key("gradient", {"cap": 1})
    value = {"v": torch.zeros(100)}
    size = len(encode(value, {}, key=key))
    make(max_inline_bytes=size).put(key, value, {})
    assert not blob_files(blobs)
    make(max_inline_bytes=size - 1).put(key, value, {})
    assert len(blob_files(blobs)) == 1


@pytest.mark.parametrize("damage", ["deleted", "truncated"])
def test_a_dangling_index_is_a_miss(make, blobs, damage):
    cache = make(max_inline_bytes=0)
    key = make_key("ihvp", {"d": damage})
    cache.put(key, {"v": torch.randn(50)}, {})
    sha256 = cache.client.hget(cache.index_key(key), "sha256").decode()
    if damage == "deleted":
        blobs.delete(sha256)
    else:
        path = blobs.path(sha256)
        path.write_bytes(path.read_bytes()[:20])
    assert cache.get(key) is None
    assert not cache.client.exists(cache.index_key(key))  # the index is dropped, not retried
    entry = cache.compute_once(key, lambda: ({"v": torch.ones(2)}, {"again": True}))
    assert entry.status == "computed" and cache.get(key).meta == {"again": True}


def test_entries_expire_unless_used(make):
    cache = make(ttl_seconds=300)
    key = make_key("gradient", {"ttl": 1})
    cache.put(key, {"v": torch.ones(3)}, {})
    name = cache.index_key(key)
    assert 290 <= cache.client.ttl(name) <= 300
    cache.client.expire(name, 5)
    assert cache.get(key) is not None
    assert cache.client.ttl(name) > 290  # a hit renews the lifetime
    short = make(ttl_seconds=1)
    key2 = make_key("gradient", {"ttl": 2})
    short.put(key2, {"v": torch.ones(3)}, {})
    time.sleep(1.5)
    assert short.get(key2) is None


def test_concurrent_workers_compute_an_entry_once(make):
    key = make_key("lowrank", {"workers": 4})
    calls, out = [], []
    barrier = threading.Barrier(4)

    def fn():
        calls.append(1)
        time.sleep(0.3)
        return {"v": torch.arange(4.0)}, {"by": len(calls)}

    def worker():
        cache = make(max_inline_bytes=0)  # its own client, like a separate worker process
        barrier.wait()
        out.append(cache.compute_once(key, fn))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert len(calls) == 1
    assert sorted(e.status for e in out) == ["computed", "waited", "waited", "waited"]
    assert all(torch.equal(e.tensors["v"], torch.arange(4.0)) and e.meta == {"by": 1} for e in out)


def test_the_lock_is_renewed_while_a_long_computation_runs(make):
    key = make_key("lowrank", {"long": 1})
    calls, out = [], []
    started = threading.Event()

    def slow():
        calls.append(1)
        started.set()
        time.sleep(1.5)  # three lock lifetimes
        return {"v": torch.ones(1)}, {}

    first = threading.Thread(target=lambda: out.append(make(lock_timeout=0.5).compute_once(key, slow)))
    first.start()
    started.wait(10)
    second = make(lock_timeout=0.5).compute_once(key, slow)
    first.join(timeout=30)
    assert len(calls) == 1 and second.status == "waited"


def test_a_dead_holders_lock_lapses_and_a_bounded_wait_computes_anyway(make):
    cache = make(lock_timeout=5)
    key = make_key("ihvp", {"dead": 1})
    # a worker that took the lock and died: nobody renews or releases it
    assert cache.client.lock(cache.lock_key(key), timeout=0.6).acquire(blocking=False)
    start = time.monotonic()
    entry = cache.compute_once(key, lambda: ({"v": torch.ones(1)}, {}))
    assert entry.status == "computed" and 0.3 < time.monotonic() - start < 5
    key2 = make_key("ihvp", {"dead": 2})
    assert cache.client.lock(cache.lock_key(key2), timeout=60).acquire(blocking=False)
    impatient = make(lock_wait=0.2)
    start = time.monotonic()
    assert impatient.compute_once(key2, lambda: ({"v": torch.ones(1)}, {})).status == "computed"
    assert time.monotonic() - start < 5


def test_an_unreachable_redis_never_fails_the_computation_and_is_bypassed_for_a_while(blobs):
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis(
        host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    cache = RedisCache(client, blobs)
    entry = cache.compute_once(make_key("gradient", {"down": 1}), lambda: ({"v": torch.ones(2)}, {"ok": 1}))
    assert entry.status == "computed" and entry.meta == {"ok": 1} and not cache.available

    class Down:
        calls = 0

        def __getattr__(self, name):
            def fail(*args, **kwargs):
                Down.calls += 1
                raise redis.exceptions.ConnectionError("Connection refused")

            return fail

    down = RedisCache(Down(), blobs)
    for i in range(5):  # one failed call, then the cache is left alone: no timeout per lookup
        assert (
            down.compute_once(make_key("gradient", {"i": i}), lambda: ({"v": torch.ones(1)}, {})).status
            == "computed"
        )
    assert Down.calls == 1
    down._down_until = 0.0  # retry_after has passed
    down.compute_once(make_key("gradient", {"i": 9}), lambda: ({"v": torch.ones(1)}, {}))
    assert Down.calls == 2


def test_a_client_that_decodes_responses_is_refused(redis_url, blobs):
    with pytest.raises(ValueError, match="decode_responses"):
        RedisCache(redis.Redis.from_url(redis_url, decode_responses=True), blobs)


def test_sweep_deletes_only_blobs_of_expired_entries(make, blobs):
    cache = make(max_inline_bytes=0, ttl_seconds=100)
    old, kept = make_key("lowrank", {"s": 1}), make_key("lowrank", {"s": 2})
    cache.put(old, {"v": torch.zeros(10)}, {})
    cache.put(kept, {"v": torch.ones(10)}, {})
    sha_old = cache.client.hget(cache.index_key(old), "sha256").decode()
    sha_kept = cache.client.hget(cache.index_key(kept), "sha256").decode()
    cache.client.zadd(cache.blob_set, {sha_old: time.time() - 1})  # its entry expired a second ago
    assert cache.sweep() == 1
    assert not blobs.exists(sha_old) and blobs.exists(sha_kept)
    assert cache.get(old) is None  # if its index had outlived the blob: a plain miss


def test_make_cache_picks_the_backend(redis_url, tmp_path, blobs):
    disk = make_cache(None, tmp_path / "home")
    assert isinstance(disk, DiskCache) and disk.root == tmp_path / "home" / "cache"
    remote = make_cache(redis_url, tmp_path / "home", blobs, ttl_seconds=60)
    assert isinstance(remote, RedisCache) and remote.ttl_seconds == 60
    with pytest.raises(ValueError, match="blob store"):
        make_cache(redis_url, tmp_path / "home")


def test_a_repeated_edit_through_redis_is_bit_identical_and_free(make, blobs):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double().eval()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (50,), generator=gen)
    options = {"solver": "lowrank", "rank": 6, "newton_steps": 3}
    cold = gif.remove(model, (x, y), [1, 2, 3], cache=make(max_inline_bytes=2048), **options)
    assert blob_files(blobs)  # the curvature fit is over the inline cap
    warm = gif.remove(model, (x, y), [1, 2, 3], cache=make(max_inline_bytes=2048), **options)
    assert warm.report["hvps"] == warm.report["gradients"] == 0
    assert warm.report["cache"]["misses"] == [] and warm.report["cache"]["hits"]
    assert torch.equal(cold.delta, warm.delta)
    assert torch.equal(cold.lowrank.eigenvectors, warm.lowrank.eigenvectors)
    assert cold.report["metrics"] == warm.report["metrics"]
