"""Content-addressed cache of an edit's expensive intermediate results.

An edit (:func:`gif.remove`, :func:`gif.relabel`) spends nearly all its time on gradients and
Hessian-vector products. Their results are pure functions of their inputs, so they can be
stored under a digest of those inputs and reused by a repeated or related request:

========== ===================================================================================
kind       value, and what its key covers
========== ===================================================================================
selection  the selected flat indices T: model, edited samples, strategy, ratio, seed, loss
gradient   ∇ of a mean loss: model (θ and everything else that shapes the output), data,
           loss, chunking
lowrank    a Lanczos curvature fit: model, Hessian data, rank, seed, loss, HVP back end, chunking
ihvp       an influence solve (vector + diagnostics): model, Hessian data, right-hand side g,
           selected indices, method, damping, solver, tol, max_iter, rank, seed, loss, back end,
           chunking, the curvature fit used, and for ``sif`` the target data and group fraction
evaluation the metrics of a model on a labelled set: model, data, loss
========== ===================================================================================

A key is ``"<kind>:<sha256 hex>"`` of the canonical JSON of those parts plus
:data:`CACHE_VERSION`. Nothing is ever invalidated: a changed input is a different key, and a
change of the engine's numerics bumps :data:`CACHE_VERSION`. The device is not part of a key
(a value computed on a GPU serves a CPU worker); dtypes are (through the model digest).

Values are dicts of tensors plus a small JSON ``meta``, serialised with safetensors (tensors
stored on the CPU, handed back on the caller's device). Backends implement :class:`Cache`:
:class:`MemoryCache` (tests, notebooks), :class:`DiskCache` (a folder; the embedded service
keeps one under ``GIF_HOME/cache``) and ``workers.cache.RedisCache`` (the distributed service).
:meth:`Cache.compute_once` takes a per-key lock so that concurrent workers compute an entry
once while the others wait and read it.

Edits use a cache through :class:`Memo`, one request's view of it that also records which
entries hit and which were computed (``report["cache"]``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
from torch import nn

from .config import SolveConfig
from .hessian import cross_entropy
from .inverse import LowRankInverse
from .methods import InfluenceResult, solve_influence
from .solvers import LowRankHessian, Monitor

if TYPE_CHECKING:
    from .hessian import HessianOperator

__all__ = [
    "CACHE_VERSION",
    "KINDS",
    "BaseCache",
    "Cache",
    "CacheStats",
    "CachedSolves",
    "DiskCache",
    "Entry",
    "Memo",
    "MemoryCache",
    "check_key",
    "data_digest",
    "decode",
    "encode",
    "loss_id",
    "make_key",
    "model_digest",
    "options_digest",
    "read_file",
    "tensor_digest",
]

log = logging.getLogger(__name__)

#: Bumped whenever a change to the engine changes the bits of a cached value.
CACHE_VERSION = 2

KINDS = ("selection", "gradient", "lowrank", "ihvp", "evaluation")

_KEY = re.compile(r"^([a-z]+):([0-9a-f]{64})$")
_META = "gif.cache.meta"
_KEY_FIELD = "gif.cache.key"


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

    def get(self, key: str, *, device: torch.device | str | None = None) -> Entry | None:
        """The entry stored under ``key`` (tensors on ``device``, default CPU), or None."""

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
        """Store a value (tensors are copied to the CPU; ``meta`` must be JSON-serialisable)."""

    def lock(self, key: str) -> AbstractContextManager[None]:
        """Exclusive, blocking, per-key lock shared by every process using this cache."""

    def compute_once(
        self,
        key: str,
        fn: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping]],
        *,
        device: torch.device | str | None = None,
    ) -> Entry:
        """The entry under ``key``; if absent, ``fn()`` → (tensors, meta) is computed and stored
        under the key's lock, so concurrent callers compute it once and the others read it."""


class BaseCache:
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

    def get(self, key: str, *, device: torch.device | str | None = None) -> Entry | None:
        raise NotImplementedError

    def put(self, key: str, tensors: Mapping[str, torch.Tensor], meta: Mapping | None = None) -> None:
        raise NotImplementedError

    def lock(self, key: str) -> AbstractContextManager[None]:
        raise NotImplementedError

    @property
    def available(self) -> bool:
        return time.monotonic() >= self._down_until

    def lookup(self, key: str, *, device: torch.device | str | None = None) -> Entry | None:
        """``get`` that answers None (a miss) while the backend is unavailable."""
        if not self.available:
            return None
        try:
            return self.get(key, device=device)
        except self.unavailable as exc:
            self._failed("lookup of", key, exc)
            return None

    def compute_once(
        self,
        key: str,
        fn: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping]],
        *,
        device: torch.device | str | None = None,
    ) -> Entry:
        check_key(key)
        entry = self.lookup(key, device=device)
        if entry is not None:
            return entry
        guard: AbstractContextManager = contextlib.nullcontext()
        if self.available:
            try:
                guard = self.lock(key)
                guard.__enter__()
            except self.unavailable as exc:
                self._failed("lock for", key, exc)
                guard = contextlib.nullcontext()
        with _entered(guard):
            entry = self.lookup(key, device=device)
            if entry is not None:
                return replace(entry, status="waited")
            tensors, meta = fn()
            if self.available:
                try:
                    self.put(key, tensors, meta)
                except self.unavailable as exc:
                    self._failed("store of", key, exc)
        # the computed tensors themselves (bit-equal to what a later get returns)
        return Entry(key, dict(tensors), dict(meta or {}), "computed")

    def _failed(self, what: str, key: str, exc: BaseException) -> None:
        log.warning("cache %s %s failed (%s); bypassing the cache for %ss", what, key, exc, self.retry_after)
        self._down_until = time.monotonic() + self.retry_after


@contextlib.contextmanager
def _entered(guard: AbstractContextManager) -> Iterator[None]:
    """Exit an already entered context manager when the block ends."""
    try:
        yield
    except BaseException as exc:
        if not guard.__exit__(type(exc), exc, exc.__traceback__):
            raise
    else:
        guard.__exit__(None, None, None)


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

    def get(self, key: str, *, device: torch.device | str | None = None) -> Entry | None:
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
    threads, and released by the kernel if the holder dies. With ``max_bytes`` set, a ``put`` evicts the least recently used
    entries (by modification time, refreshed on every hit) until the folder fits.
    """

    def __init__(self, root: str | os.PathLike, *, max_bytes: int | None = None) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        (self.root / "locks").mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        kind, digest = check_key(key)
        return self.root / kind / digest[:2] / f"{digest}.safetensors"

    def get(self, key: str, *, device: torch.device | str | None = None) -> Entry | None:
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
            os.replace(tmp, path)  # no fsync: after a crash a torn entry fails to parse and is dropped
        finally:
            tmp.unlink(missing_ok=True)
        if self.max_bytes is not None:
            self.evict(keep=path)

    def delete(self, key: str) -> None:
        self.path(key).unlink(missing_ok=True)

    def entries(self) -> list[Path]:
        return [p for p in self.root.glob("*/*/*.safetensors") if p.parent.parent.name != "locks"]

    def size_bytes(self) -> int:
        return sum(_size(p) for p in self.entries())

    def evict(self, *, keep: Path | None = None) -> None:
        """Delete least recently used entries until the folder holds at most ``max_bytes``."""
        if self.max_bytes is None:
            return
        files = []
        for p in self.entries():
            with contextlib.suppress(FileNotFoundError):
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
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


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


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


def decode(data: bytes, device: torch.device | str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Inverse of :func:`encode`: (tensors on ``device``, meta)."""
    from safetensors.torch import load

    tensors = load(data)
    header_len = int.from_bytes(data[:8], "little")  # safetensors: u64 header length, JSON header
    header = json.loads(data[8 : 8 + header_len])
    meta = json.loads((header.get("__metadata__") or {}).get(_META, "{}"))
    return {k: t.to(device) if device is not None else t for k, t in tensors.items()}, meta


def read_file(
    path: str | os.PathLike, device: torch.device | str | None = None
) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, meta) of a file written with :func:`encode` (memory-mapped read)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = json.loads((f.metadata() or {}).get(_META, "{}"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    if device is not None:
        tensors = {k: t.to(device) for k, t in tensors.items()}
    return tensors, meta


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


# -- keys and digests ----------------------------------------------------------------------------


def check_key(key: str) -> tuple[str, str]:
    """Split ``"<kind>:<64 hex>"`` into (kind, hex); ValueError for anything else."""
    m = _KEY.match(key) if isinstance(key, str) else None
    if m is None:
        raise ValueError(f"not a cache key (want '<kind>:<sha256 hex>'): {key!r}")
    return m.group(1), m.group(2)


def make_key(kind: str, parts: Mapping[str, Any]) -> str:
    """``"<kind>:<sha256>"`` of the canonical JSON of ``parts`` (tensors in it are digested)."""
    if kind not in KINDS:
        raise ValueError(f"unknown cache kind {kind!r}; known: {', '.join(KINDS)}")
    return f"{kind}:{options_digest({'kind': kind, 'version': CACHE_VERSION, 'parts': dict(parts)})}"


def options_digest(obj: Any) -> str:
    """SHA-256 of canonical JSON: sorted keys, no spaces, floats as their shortest repr."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()


def _canonical(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return {"tensor": tensor_digest(value)}
    if isinstance(value, (torch.dtype, torch.device, Path)):
        return str(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    raise TypeError(f"cannot put a {type(value).__name__} in a cache key")


def tensor_digest(*tensors: torch.Tensor) -> str:
    """SHA-256 over each tensor's dtype, shape and raw bytes (CPU, C order)."""
    h = hashlib.sha256()
    for t in tensors:
        _hash_tensor(h, t)
    return h.hexdigest()


def data_digest(data: Any) -> str:
    """Digest of ``(inputs, targets)`` or an iterable of such batches (batch boundaries count,
    because chunking changes the round-off of a gradient)."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, torch.Tensor) for t in data):
        batches = [tuple(data)]
    else:
        batches = [tuple(b) for b in data]
    h = hashlib.sha256(b"gif.data\0")
    for batch in batches:
        h.update(f"batch:{len(batch)}\0".encode())
        for t in batch:
            _hash_tensor(h, t)
    return h.hexdigest()


def model_digest(model: nn.Module) -> str:
    """Digest of everything that decides a model's outputs as a function of its input.

    Covers ``repr(model)`` (module types and their configurations), every parameter (name,
    shape, dtype, ``requires_grad``, values) and every buffer (e.g. BatchNorm running
    statistics). Custom modules whose ``forward`` depends on attributes missing from their
    ``repr`` should show them in ``extra_repr``.
    """
    h = hashlib.sha256(b"gif.model\0")
    h.update(repr(model).encode())
    for name, p in model.named_parameters():
        h.update(f"\0param:{name}:{int(p.requires_grad)}\0".encode())
        _hash_tensor(h, p)
    for name, b in model.named_buffers():
        h.update(f"\0buffer:{name}\0".encode())
        _hash_tensor(h, b)
    return h.hexdigest()


def _hash_tensor(h: Any, t: torch.Tensor) -> None:
    t = t.detach()
    h.update(f"{t.dtype}:{tuple(t.shape)}\0".encode())
    if t.numel():
        flat = t.to("cpu").contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().data)


def loss_id(loss_fn: Callable | None) -> str | None:
    """A stable name for a loss function, or None when it cannot be named safely.

    The default cross-entropy is ``"cross_entropy"``; any other callable must carry a
    ``cache_key`` attribute (a string that changes whenever the loss does), else caching is
    bypassed for the edit: a function's name says nothing about what it computes.
    """
    if loss_fn is None or loss_fn is cross_entropy or loss_fn is torch.nn.functional.cross_entropy:
        return "cross_entropy"
    key = getattr(loss_fn, "cache_key", None)
    return str(key) if key is not None else None


# -- stats ---------------------------------------------------------------------------------------


class CacheStats:
    """Which entries one request found (``hits``, including ones it waited for while another
    process computed them) and which it computed (``misses``), as short ``{"kind", "key"}``
    records (the key's first 16 hex digits), one per lookup; ``counts`` totals them per kind
    as ``{"hit", "wait", "miss"}`` (the labels of a requests-by-result metric)."""

    def __init__(self) -> None:
        self.hits: list[dict] = []
        self.misses: list[dict] = []
        self.counts: dict[str, dict[str, int]] = {}

    def record(self, key: str, status: str) -> None:
        kind, digest = check_key(key)
        item: dict[str, Any] = {"kind": kind, "key": digest[:16]}
        if status == "waited":
            item["waited"] = True
        (self.misses if status == "computed" else self.hits).append(item)
        result = {"hit": "hit", "waited": "wait", "computed": "miss"}[status]
        per_kind = self.counts.setdefault(kind, {"hit": 0, "wait": 0, "miss": 0})
        per_kind[result] += 1

    def as_dict(self) -> dict:
        return {
            "hits": list(self.hits),
            "misses": list(self.misses),
            "counts": {k: dict(v) for k, v in self.counts.items()},
        }


# -- one request's view ---------------------------------------------------------------------------


class Memo:
    """Get-or-compute against a cache for one request, recording hits and misses.

    With no cache, or when ``disabled`` gives a reason, every lookup simply computes and the
    digest helpers return ``""`` so that uncached edits pay nothing for hashing.
    """

    def __init__(self, cache: Cache | None, *, disabled: str | None = None) -> None:
        self.cache = cache
        self.disabled = disabled
        self.stats = CacheStats()

    @property
    def enabled(self) -> bool:
        return self.cache is not None and self.disabled is None

    # digests (empty when disabled)

    def model(self, model: nn.Module) -> str:
        return model_digest(model) if self.enabled else ""

    def data(self, *tensors: torch.Tensor) -> str:
        return tensor_digest(*tensors) if self.enabled else ""

    # lookups

    def fetch(
        self,
        kind: str,
        parts: Mapping[str, Any],
        compute: Callable[[], tuple[Mapping[str, torch.Tensor], Mapping]],
        *,
        device: torch.device | str | None,
    ) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors, meta) of the entry for ``parts``, computed (once, under its lock) if absent."""
        if not self.enabled:
            tensors, meta = compute()
            return dict(tensors), dict(meta or {})
        assert self.cache is not None
        entry = self.cache.compute_once(make_key(kind, parts), compute, device=device)
        self.stats.record(entry.key, entry.status)
        return entry.tensors, entry.meta

    def peek(self, key: str, *, device: torch.device | str | None) -> Entry | None:
        """The entry under ``key`` if present (nothing recorded; see :meth:`record`)."""
        if not self.enabled:
            return None
        assert self.cache is not None
        lookup = getattr(self.cache, "lookup", self.cache.get)
        return lookup(key, device=device)

    def record(self, key: str, status: str) -> None:
        if self.enabled:
            self.stats.record(key, status)

    def tensor(
        self,
        kind: str,
        parts: Mapping[str, Any],
        compute: Callable[[], torch.Tensor],
        *,
        device: torch.device | str | None,
    ) -> torch.Tensor:
        tensors, _ = self.fetch(kind, parts, lambda: ({"value": compute()}, {}), device=device)
        return tensors["value"]

    def meta(self, kind: str, parts: Mapping[str, Any], compute: Callable[[], dict]) -> dict:
        """A JSON-only value (no tensors), e.g. metrics."""
        return self.fetch(kind, parts, lambda: ({}, compute()), device=None)[1]

    def gradient(self, op: HessianOperator, *, model: str, data: str, loss: str) -> torch.Tensor:
        """``op.gradient()``: ∇ of the mean loss of ``op``'s data at ``op``'s θ.

        ``model``, ``data`` and ``loss`` identify the model, data and loss ``op`` was built on;
        the chunk sizes come from ``op`` (chunking changes the round-off).
        """
        parts = {"model": model, "data": data, "loss": loss, "chunks": [len(c) for c in op.data]}
        return self.tensor("gradient", parts, op.gradient, device=op.flat.device)

    def influence(
        self,
        parts: Mapping[str, Any],
        solve: Callable[[], InfluenceResult],
        *,
        index: torch.Tensor,
        device: torch.device | str | None,
    ) -> InfluenceResult:
        """An influence solve for ``parts``. A cached result has no ``lowrank`` (the fit is an
        entry of its own)."""
        fresh: list[InfluenceResult] = []

        def compute() -> tuple[dict, dict]:
            fresh.append(solve())
            return influence_entry(fresh[0])

        tensors, meta = self.fetch("ihvp", parts, compute, device=device)
        return fresh[0] if fresh else influence_from_entry(tensors, meta, index)

    def report(self) -> dict:
        out = self.stats.as_dict()
        if self.disabled is not None:
            out["bypassed"] = self.disabled
        return out


# -- engine values <-> entries -------------------------------------------------------------------


#: The JSON part of a cached influence solve (its tensor is ``vector``).
_INFLUENCE_META = ("method", "solver", "converged", "iterations", "hvps", "grads", "residual", "history", "note",
                   "seconds")  # fmt: skip


def influence_entry(result: InfluenceResult) -> tuple[dict[str, torch.Tensor], dict]:
    return {"vector": result.vector}, {name: getattr(result, name) for name in _INFLUENCE_META}


def influence_from_entry(
    tensors: Mapping[str, torch.Tensor], meta: Mapping, index: torch.Tensor
) -> InfluenceResult:
    fields = {name: meta[name] for name in _INFLUENCE_META}
    return InfluenceResult(
        vector=tensors["vector"], params=index.cpu(), **{**fields, "history": list(fields["history"])}
    )


def lowrank_entry(fit: LowRankHessian) -> tuple[dict[str, torch.Tensor], dict]:
    return fit.state_dict(), {"hvps": fit.hvps, "meta": dict(fit.meta)}


def lowrank_from_entry(tensors: Mapping[str, torch.Tensor], meta: Mapping) -> LowRankHessian:
    return LowRankHessian(
        tensors["eigenvalues"],
        tensors["eigenvectors"],
        tensors["residuals"],
        int(meta.get("hvps", 0)),
        dict(meta.get("meta", {})),
    )


def lowrank_digest(fit: LowRankHessian) -> str:
    """Content digest of a caller-supplied fit (its tensors)."""
    return tensor_digest(fit.eigenvalues, fit.eigenvectors, fit.residuals)


#: SolveConfig fields a curvature fit does not depend on; every other field is in its key, so a
#: field added later is keyed by default (a miss at worst, never a stale hit).
FIT_INDEPENDENT = frozenset({"method", "damping", "solver", "tol", "max_iter"})


def solve_key(config: SolveConfig) -> dict[str, Any]:
    """What an ``ihvp`` entry's key holds of the configuration: every field of the solve."""
    return config.solve_config().to_dict()


def fit_key(config: SolveConfig) -> dict[str, Any]:
    """What a ``lowrank`` entry's key holds of the configuration: every field but
    :data:`FIT_INDEPENDENT`."""
    return {k: v for k, v in solve_key(config).items() if k not in FIT_INDEPENDENT}


class CachedSolves:
    """The influence solves of one edit through a :class:`Memo`: a wrapper at the
    inverse-Hessian boundary.

    Each solve is an ``ihvp`` entry keyed on the whole solve configuration (:func:`solve_key`),
    the digests of θ, the Hessian data, the loss, the right-hand side and T. With
    ``solver="lowrank"`` the curvature fit is an entry of its own (kind ``lowrank``, keyed by
    :func:`fit_key` on the model and Hessian data at the first solve), so a related request on
    the same checkpoint and Hessian data reuses the fit even when its right-hand side differs;
    the fit then serves every later Newton step, as it does uncached. A fit given by the caller
    is identified by the digest of its tensors.
    """

    def __init__(self, memo: Memo, given: LowRankHessian | None) -> None:
        self.memo = memo
        self.fit = given
        self._id: str | None = None  # the fit's identity in ihvp keys
        self._key: str | None = None  # its cache key when this edit derives it

    def solve(
        self,
        hessian: HessianOperator,
        g: torch.Tensor,
        index: torch.Tensor,
        config: SolveConfig,
        *,
        model: str,
        data: str,
        loss: str,
        extra: Mapping[str, Any],
        monitor: Monitor,
        target_hvp: Callable[[torch.Tensor], torch.Tensor] | None = None,
        group_fraction: float = 0.0,
    ) -> InfluenceResult:
        """``solve_influence(hessian, g, index, config, ...)``, from the cache when possible.

        ``model``/``data``/``loss`` identify θ, the Hessian data and the loss of ``hessian``;
        ``extra`` holds whatever else the solve depends on (e.g. the target of ``sif``). What is
        computed is counted in ``hessian.work``; a cached solve costs nothing.
        """
        lowrank = config.solver == "lowrank"
        if lowrank and self.memo.enabled and self._id is None:
            self._identify_fit(hessian, config, model=model, data=data, loss=loss)
        parts = {
            "model": model,
            "data": data,
            "loss": loss,
            "rhs": self.memo.data(g),
            "params": self.memo.data(index),
            "backend": hessian.backend,
            "chunks": [len(c) for c in hessian.data],
            "curvature": self._id,
            "config": solve_key(config),
            "group_fraction": group_fraction,
            "extra": dict(extra),
        }

        def run(fit: LowRankHessian | None) -> InfluenceResult:
            return solve_influence(
                hessian, g, index, config, target_hvp=target_hvp, group_fraction=group_fraction, lowrank=fit,
                monitor=monitor,
            )  # fmt: skip

        def compute() -> InfluenceResult:
            if lowrank and self.fit is None and self._key is not None:
                return self._solve_and_fit(hessian, run)
            return run(self.fit)

        result = self.memo.influence(parts, compute, index=index, device=g.device)
        if lowrank and self.fit is None:
            if result.lowrank is not None:
                self.fit = result.lowrank
            else:  # the solve was cached but the fit is not: this edit must still return it
                self.fit = self._fit(hessian, config, monitor)
        return result

    def _identify_fit(
        self, hessian: HessianOperator, config: SolveConfig, *, model: str, data: str, loss: str
    ) -> None:
        if self.fit is not None:
            self._id = "given:" + lowrank_digest(self.fit)
            return
        parts = {"model": model, "data": data, "loss": loss, "config": fit_key(config), "backend": hessian.backend,
                 "chunks": [len(c) for c in hessian.data]}  # fmt: skip
        self._key = self._id = make_key("lowrank", parts)
        found = self.memo.peek(self._key, device=hessian.flat.device)
        if found is not None:
            self.memo.record(self._key, "hit")
            self.fit = lowrank_from_entry(found.tensors, found.meta)

    def _solve_and_fit(
        self, hessian: HessianOperator, run: Callable[[LowRankHessian | None], InfluenceResult]
    ) -> InfluenceResult:
        """The first solve fits the curvature (under the fit's lock); a fit that appeared in the
        meantime (another worker) is used instead."""
        fresh: list[InfluenceResult] = []

        def compute() -> tuple[dict, dict]:
            fresh.append(run(None))
            assert fresh[0].lowrank is not None
            return lowrank_entry(fresh[0].lowrank)

        entry = self._fetch_fit(compute, hessian)
        if fresh:
            return fresh[0]
        self.fit = lowrank_from_entry(entry.tensors, entry.meta)
        return run(self.fit)

    def _fit(self, hessian: HessianOperator, config: SolveConfig, monitor: Monitor) -> LowRankHessian:
        def compute() -> tuple[dict, dict]:
            steps = config.solver_options.get("steps")
            inverse = LowRankInverse(hessian, config.damping, rank=config.rank, seed=config.seed,
                                     steps=None if steps is None else int(steps))  # fmt: skip
            inverse.prepare(monitor)
            return lowrank_entry(inverse.fitted)

        entry = self._fetch_fit(compute, hessian)
        return lowrank_from_entry(entry.tensors, entry.meta)

    def _fetch_fit(self, compute: Callable[[], tuple[dict, dict]], hessian: HessianOperator) -> Entry:
        assert self.memo.cache is not None and self._key is not None
        entry = self.memo.cache.compute_once(self._key, compute, device=hessian.flat.device)
        self.memo.record(entry.key, entry.status)
        return entry
