"""Content-addressed cache of an edit's expensive intermediate results.

An edit (:func:`gif.remove`, :func:`gif.relabel`) spends nearly all its time on gradients and
Hessian-vector products, pure functions of their inputs: they are stored under a digest of
those inputs and reused by a repeated or related request. The kinds of entries and what each
key covers: (docs/engine.md, "Cache (`gif.cache`)").

A key is ``"<kind>:<sha256 hex>"`` of the canonical JSON of its parts plus
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
entries hit and which were computed (``report["cache"]``), and :class:`CachedSolves`, the
wrapper at the inverse-Hessian boundary.

Files: :mod:`.keys` (keys and digests), :mod:`.store` (entries, backends, serialisation),
:mod:`.memo` (one request's view and the solve wrapper).
"""

from .keys import (
    CACHE_VERSION,
    KINDS,
    check_key,
    data_digest,
    loss_id,
    make_key,
    model_digest,
    options_digest,
    tensor_digest,
)
from .memo import FIT_INDEPENDENT, CachedSolves, CacheStats, Memo, fit_key, solve_key
from .store import BaseCache, Cache, DiskCache, Entry, MemoryCache, decode, encode, read_file

__all__ = [
    "CACHE_VERSION",
    "FIT_INDEPENDENT",
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
    "fit_key",
    "loss_id",
    "make_key",
    "model_digest",
    "options_digest",
    "read_file",
    "solve_key",
    "tensor_digest",
]
