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
lowrank    a Lanczos curvature fit: model, Hessian data, every solve option a fit depends on
           (:func:`fit_key`), loss, HVP back end, chunking
ihvp       an influence solve (vector + diagnostics): model, Hessian data, right-hand side g,
           selected indices, the whole solve configuration (:func:`solve_key`), loss, back end,
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
