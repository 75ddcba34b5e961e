"""Cache entries, the backend interface and its in-memory and folder backends, serialisation."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, TypeVar, runtime_checkable

import torch

from .keys import check_key

log = logging.getLogger(__name__)

_META = "gif.cache.meta"
_KEY_FIELD = "gif.cache.key"

#: Where a cache hands back tensors (None: the CPU), an entry's value (tensors, meta) and a
#: computation that makes one.
Device = torch.device | str | None
Value = tuple[dict[str, torch.Tensor], dict]
Compute = Callable[[], tuple[Mapping[str, torch.Tensor], Mapping]]
_T = TypeVar("_T")


# -- entries and backends ------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A cached value: named tensors and a JSON-ready ``meta`` dict.

    ``status`` says how the caller got it: ``"hit"`` (it was there), ``"waited"`` (another
    process computed it while this one waited for the lock) or ``"computed"`` (this call did).
    """

    key: str
    tensors: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    status: str = "hit"

    @property
    def hit(self) -> bool:
        return self.status != "computed"


@runtime_checkable
class Cache(Protocol):
    """What :class:`Memo` (and so every edit) needs from a cache backend."""

    def get(self, key: str, *, device: Device = None) -> Entry | None:
        """The entry stored under ``key`` (tensors on ``device``, default CPU), or None."""

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
        """Store a value (tensors are copied to the CPU; ``meta`` must be JSON-serialisable)."""

    def lock(self, key: str) -> contextlib.AbstractContextManager[None]:
        """Exclusive, blocking, per-key lock shared by every process using this cache."""

    def compute_once(self, key: str, fn: Compute, *, device: Device = None) -> Entry:
        """The entry under ``key``; if absent, ``fn()`` → (tensors, meta) is computed and stored
        under the key's lock, so concurrent callers compute it once and the others read it."""


class BaseCache(Cache):
    """``compute_once`` on top of ``get`` / ``put`` / ``lock``; backends subclass this.

    A backend that is unreachable or full (its ``unavailable`` errors) never fails an edit: the
    lookup counts as a miss, the value is computed and simply not stored, and the backend is
    left alone for ``retry_after`` seconds so that an outage costs one timeout, not one per
    lookup.
    """

    #: Exceptions that mean "the store is unavailable" rather than a bug.
    unavailable: tuple[type[BaseException], ...] = (OSError,)
    #: Seconds a backend that failed is bypassed.
    retry_after: float = 30.0
    _down_until: float = 0.0

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def lookup(self, key: str, *, device: Device = None) -> Entry | None:
        """``get`` that answers None (a miss) while the backend is unavailable."""
        return self._attempt("lookup of", key, lambda: self.get(key, device=device))

    def compute_once(self, key: str, fn: Compute, *, device: Device = None) -> Entry:
        check_key(key)
        entry = self.lookup(key, device=device)
        if entry is not None:
            return entry
        with contextlib.ExitStack() as held:
            self._attempt("lock for", key, lambda: held.enter_context(self.lock(key)))
            entry = self.lookup(key, device=device)
            if entry is not None:
                return replace(entry, status="waited")
            tensors, meta = fn()
            self._attempt("store of", key, lambda: self.put(key, tensors, meta))
        # the computed tensors themselves (bit-equal to what a later get returns)
        return Entry(key, dict(tensors), dict(meta or {}), "computed")

    def _attempt(self, what: str, key: str, call: Callable[[], _T]) -> _T | None:
        """``call()``; None while the backend is unavailable, and when it fails as such."""
        if not self.available:
            return None
        try:
            return call()
        except self.unavailable as exc:
            log.warning(
                "cache %s %s failed (%s); bypassing the cache for %ss", what, key, exc, self.retry_after
            )
            self._down_until = time.monotonic() + self.retry_after
            return None


class MemoryCache(BaseCache):
    """An in-process cache (tests, notebooks): CPU copies in a dict, optionally LRU-bounded.

    Args:
        max_bytes: evict least-recently-used entries above this many tensor bytes (None: never).
    """

    def __init__(self, max_bytes: int | None = None) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[dict[str, torch.Tensor], str, int]] = OrderedDict()
        self._guard = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def keys(self) -> list[str]:
        with self._guard:
            return list(self._entries)

    def get(self, key: str, *, device: Device = None) -> Entry | None:
        check_key(key)
        with self._guard:
            found = self._entries.get(key)
            if found is None:
                return None
            self._entries.move_to_end(key)
        tensors, meta, _ = found
        return Entry(key, {k: t.to(device or "cpu", copy=True) for k, t in tensors.items()}, json.loads(meta))

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
        check_key(key)
        stored = _cpu_copies(tensors)
        size = sum(t.numel() * t.element_size() for t in stored.values())
        with self._guard:
            self._entries[key] = (stored, _dump_meta(meta), size)
            self._entries.move_to_end(key)
            if self.max_bytes is not None:
                total = sum(s for _, _, s in self._entries.values())
                while total > self.max_bytes and len(self._entries) > 1:
                    _, (_, _, s) = self._entries.popitem(last=False)
                    total -= s

    def delete(self, key: str) -> None:
        with self._guard:
            self._entries.pop(key, None)

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        with self._guard:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            yield


class DiskCache(BaseCache):
    """Safetensors files under ``root/<kind>/<ab>/<hex>.safetensors``.

    Writes go to a temporary file in the same folder and are ``os.replace``d into place, so a
    reader sees a complete entry or none (not fsynced: it is a cache, and an entry torn by a
    crash fails to parse, is deleted and recomputed). Locks are ``fcntl.flock`` on
    ``root/locks/<kind>-<hex>.lock`` (removed on release): exclusive across processes and
    threads, and released by the kernel if the holder dies. With ``max_bytes`` set, a ``put``
    evicts the least recently used entries (by modification time, refreshed on every hit) until
    the folder fits.
    """

    def __init__(self, root: str | os.PathLike, *, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "locks").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        kind, digest = check_key(key)
        return self.root / kind / digest[:2] / f"{digest}.safetensors"

    def get(self, key: str, *, device: Device = None) -> Entry | None:
        path = self.path(key)
        try:
            tensors, meta = read_file(path, device)
        except FileNotFoundError:
            return None
        except OSError:
            raise  # the folder is unavailable: BaseCache treats it as a miss
        except Exception as exc:  # noqa: BLE001 (a truncated or foreign file: drop it, recompute)
            log.warning("dropping unreadable cache entry %s: %s", path, exc)
            path.unlink(missing_ok=True)
            return None
        if self.max_bytes is not None:
            with contextlib.suppress(OSError):
                os.utime(path)
        return Entry(key, tensors, meta)

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = encode(tensors, meta, key=key)
        tmp = path.parent / f".{path.name}.{secrets.token_hex(6)}.part"
        try:
            with open(tmp, "xb") as f:
                f.write(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        self.evict(keep=path)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def entries(self) -> list[Path]:
        return [p for p in self.root.glob("*/*/*.safetensors") if p.parent.parent.name != "locks"]

    def _stats(self) -> list[tuple[float, int, Path]]:
        """(modification time, size, path) of each entry (one deleted meanwhile is left out)."""
        files = []
        for p in self.entries():
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        return files

    def size_bytes(self) -> int:
        return sum(size for _, size, _ in self._stats())

    def evict(self, *, keep: Path | None = None) -> None:
        """Delete least recently used entries until the folder holds at most ``max_bytes``."""
        if self.max_bytes is None:
            return
        files = self._stats()
        total = sum(s for _, s, _ in files)
        for _, size, p in sorted(files, key=lambda f: (f[0], str(f[2]))):
            if total <= self.max_bytes:
                break
            if p == keep:
                continue
            p.unlink(missing_ok=True)
            total -= size

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        import fcntl  # POSIX only; imported here so that `import gif` works everywhere

        kind, digest = check_key(key)
        path = self.root / "locks" / f"{kind}-{digest}.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                # No lock file per entry ever lingers. A waiter that opened the file before this
                # unlink then holds a lock nobody else sees; it re-reads the entry first, so at
                # worst (the computation here failed) two processes compute it: harmless.
                path.unlink(missing_ok=True)
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


# -- serialisation -------------------------------------------------------------------------------


def encode(
    tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None, *, key: str | None = None
) -> bytes:
    """Safetensors bytes of CPU copies of ``tensors``, with ``meta`` as JSON in the header (and
    the entry's ``key``, so that an entry's file says what it is)."""
    from safetensors.torch import save

    header = {_META: _dump_meta(meta)}
    if key is not None:
        header[_KEY_FIELD] = key
    return save(_cpu_copies(tensors), metadata=header)


def decode(data: bytes, device: Device = None) -> Value:
    """Inverse of :func:`encode`: (tensors on ``device``, meta)."""
    from safetensors.torch import load

    tensors = load(data)
    header = json.loads(data[8 : 8 + int.from_bytes(data[:8], "little")])  # u64 size, JSON header
    meta = json.loads((header.get("__metadata__") or {}).get(_META, "{}"))
    return {k: t.to(device) for k, t in tensors.items()}, meta  # to(None): the tensor itself


def read_file(path: str | os.PathLike, device: Device = None) -> Value:
    """(tensors, meta) of a file written with :func:`encode` (memory-mapped read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {}).get(_META, "{}"))
        return {k: f.get_tensor(k).to(device) for k in f.keys()}, meta  # noqa: SIM118 (no __iter__)


def _cpu_copies(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors that share no memory (safetensors refuses shared storage)."""
    out: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"cache values must be tensors; {name!r} is a {type(t).__name__}")
        out[name] = t.detach().to("cpu", copy=True).contiguous()
    return out


def _dump_meta(meta: Mapping | None) -> str:
    return json.dumps(dict(meta or {}), sort_keys=True, separators=(",", ":"))
