"""The job runner: claim → load inputs → engine → result artifacts → finish, fenced by the lease.

Shared by every executor: the embedded one (``workers.local``) calls :func:`run_next` in a loop;
a queue-driven one calls :func:`run_job` with the id it was given. The stored request is parsed
again into the typed job spec (``jobs.specs.load``), and everything after reads that spec; a stored
request that no longer parses ends the job ``failed`` with ``invalid_request``. Engine errors end
the job ``failed`` with ``error.code = exc.code``; anything unexpected is ``internal_error``. A
cancellation observed through ``should_stop`` ends it ``cancelled``; a worker shutdown gives
it back to the queue; a lost lease means another party owns the job, so nothing is written.
"""

from __future__ import annotations

import ctypes
import gc
import hashlib
import json
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol

import structlog
import torch

from gif.cache import Cache, DiskCache
from gif.errors import Cancelled, GifError
from jobs import artifacts, logs, specs, store
from jobs.blobs import BlobStore, open_blob_store
from jobs.config import Settings
from jobs.db import Database
from jobs.errors import BlobCorrupted, StorageUnavailable, is_storage_full
from jobs.states import JobStatus
from jobs.views import result_artifact_entry

from .cache import make_cache
from .cuda_memory import OutOfCudaMemory, Shrink, free_cuda_memory, run_shrinking
from .execute import newton_steps, peak_memory, resolve_device, run_engine
from .heartbeat import Heartbeat, JobSignals
from .loading import load_inputs
from .memory import peak_rss, reset_peak_rss
from .progress import ProgressReporter
from .results import Results, provenance, write_results
from .sizing import check_job_fits, job_budget, model_bytes

log = logs.get(__name__)

#: Returned by :func:`run_next` when no job was waiting.
IDLE = "idle"


class Flag(Protocol):
    def is_set(self) -> bool: ...


@dataclass
class WorkerContext:
    """What a worker process keeps between jobs."""

    settings: Settings
    db: Database
    blobs: BlobStore
    owner: str
    shutdown: Flag
    #: exceptions that mean the job ran out of time (Celery's soft time limit): ``deadline_exceeded``
    deadline_errors: tuple[type[BaseException], ...] = ()
    _caches: dict[str, Cache] = field(default_factory=dict)
    _cache_blobs: BlobStore | None = None
    _last_sweep: float = 0.0

    def cache_for(self, tenant_id: str) -> Cache | None:
        """The tenant's gradient cache (Redis with ``GIF_REDIS_URL``, else on disk), made on first use.

        Each tenant has a namespace of its own: entries are keyed by content only, and a shared
        namespace would let one tenant learn from timings that another holds the same data.
        """
        if not self.settings.cache:
            return None
        if tenant_id not in self._caches:
            space = hashlib.sha256(tenant_id.encode()).hexdigest()[:16]
            if self.settings.redis_url:
                # a dead worker's compute lock must lapse about as fast as its job lease, or the
                # retry of its job would wait on it (the holder renews it every third of this)
                lock_timeout = max(2.0, min(30.0, self.settings.lease_seconds))
                self._cache_blobs = self._cache_blobs or open_blob_store(self.settings, "cache")
                self._caches[tenant_id] = make_cache(
                    self.settings.redis_url, self.settings.home, self._cache_blobs,
                    namespace=f"gif:cache:{space}:", lock_timeout=lock_timeout,
                )  # fmt: skip
            else:
                folder = self.settings.home / "cache" / space
                self._caches[tenant_id] = DiskCache(folder, max_bytes=self.settings.cache_max_bytes)
        return self._caches[tenant_id]

    def sweep_caches(self, every: float = 600.0) -> None:
        """Every ``every`` seconds at most: delete the blobs of expired Redis cache entries and
        trim the local copies of a remote blob store."""
        if time.monotonic() - self._last_sweep < every:
            return
        self._last_sweep = time.monotonic()
        for blobs in filter(None, (self.blobs, self._cache_blobs)):
            try:
                blobs.trim_copies()
            except OSError as exc:
                log.warning("blob_copies_trim_failed", error=f"{type(exc).__name__}: {exc}")
        for cache in self._caches.values():
            sweep = getattr(cache, "sweep", None)
            if sweep is not None:
                try:
                    sweep()
                except Exception as exc:  # noqa: BLE001 (housekeeping must not fail a worker)
                    log.warning("cache_sweep_failed", error=f"{type(exc).__name__}: {exc}")

    @classmethod
    def create(
        cls,
        settings: Settings,
        *,
        owner: str | None = None,
        shutdown: Flag | None = None,
        deadline_errors: tuple[type[BaseException], ...] = (),
    ) -> WorkerContext:
        db = Database.for_settings(settings)
        db.create_all()
        return cls(
            settings=settings,
            db=db,
            blobs=open_blob_store(settings),
            owner=owner or f"{socket.gethostname()}:{os.getpid()}",
            shutdown=shutdown or threading.Event(),
            deadline_errors=deadline_errors,
        )


def run_job(job_id: str, settings: Settings, ctx: WorkerContext | None = None) -> JobStatus | None:
    """Claim ``job_id`` and run it; None when it was not queued (already taken, cancelled, done)."""
    ctx = ctx or WorkerContext.create(settings)
    with ctx.db.begin() as session:
        lease = store.claim(session, job_id, ctx.owner, settings.lease_seconds)
    return None if lease is None else execute(lease, ctx)


def run_next(ctx: WorkerContext) -> JobStatus | str | None:
    """Claim the oldest queued job and run it; :data:`IDLE` when there is none."""
    with ctx.db.read() as session:
        if not store.has_queued(session):
            return IDLE
    with ctx.db.begin() as session:
        lease = store.claim_next(session, ctx.owner, ctx.settings.lease_seconds)
    return IDLE if lease is None else execute(lease, ctx)


def execute(lease: store.Lease, ctx: WorkerContext) -> JobStatus | None:
    """Run a claimed job to a final state; returns that state (None if the lease was lost)."""
    structlog.contextvars.bind_contextvars(
        job_id=lease.job_id, tenant_id=lease.tenant_id, attempt=lease.attempt
    )
    signals = JobSignals(ctx.shutdown)  # type: ignore[arg-type]
    settings = ctx.settings
    try:
        with Heartbeat(
            ctx.db, lease, signals, interval=settings.heartbeat_seconds, lease_seconds=settings.lease_seconds
        ):
            try:
                results = _compute(lease, ctx, signals)
            except Cancelled:
                return _stopped(lease, ctx, signals)
            except (GifError, specs.StoredSpecInvalid) as exc:
                return _fail(lease, ctx, exc.code, exc.message)
            except OutOfCudaMemory as exc:
                return _fail(lease, ctx, "cuda_oom", str(exc))
            except torch.cuda.OutOfMemoryError:  # outside the engine's runs
                free_cuda_memory()
                message = "the GPU ran out of memory loading the job's inputs or writing its results"
                return _fail(lease, ctx, "cuda_oom", message)
            except ctx.deadline_errors:
                limit = settings.max_job_seconds
                return _fail(lease, ctx, "deadline_exceeded", f"the job ran longer than {limit:g} s")
            except Exception as exc:
                if (problem := _storage_problem(exc)) is not None:
                    return _fail(lease, ctx, "storage_error", problem)
                log.exception("job_crashed")
                return _fail(lease, ctx, "internal_error", f"{type(exc).__name__}: {exc}")
            try:
                return _commit(lease, ctx, results)
            except (OSError, StorageUnavailable) as exc:
                if (problem := _storage_problem(exc)) is None:
                    raise
                return _fail(lease, ctx, "storage_error", problem)
    finally:
        structlog.contextvars.unbind_contextvars("job_id", "tenant_id", "attempt")
        ctx.sweep_caches()
        release_memory()


def _compute(lease: store.Lease, ctx: WorkerContext, signals: JobSignals) -> Results:
    with ctx.db.read() as session:
        job = store.require_job(session, lease.tenant_id, lease.job_id)
        stored, inputs, request_sha256 = job.request_json, json.loads(job.inputs_json), job.request_sha256
    spec = specs.load(stored)
    progress = ProgressReporter(
        ctx.db, lease, signals, interval=ctx.settings.progress_seconds, newton_steps=newton_steps(spec),
        deadline_errors=ctx.deadline_errors,
    )  # fmt: skip
    progress.stage("loading_inputs", "reading checkpoint and datasets", fraction=0.0)
    device = resolve_device(ctx.settings.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    rss_reset = reset_peak_rss()
    loaded = load_inputs(spec.model, inputs, ctx.blobs, device)
    budget = job_budget(device, ctx.settings.max_memory_bytes, held=model_bytes(loaded.model))
    sizing = check_job_fits(spec, loaded, budget)
    if signals.should_stop():
        raise Cancelled("stopped before the computation started")
    cache = ctx.cache_for(lease.tenant_id)

    def retrying(shrink: Shrink) -> None:
        log.warning("cuda_out_of_memory", retry_chunk=shrink.chunk)
        message = f"the GPU ran out of memory: running again with chunks of {shrink.chunk} samples"
        progress.stage("retrying", message, fraction=0.0)

    outcome, retries = run_shrinking(
        lambda shrink: run_engine(spec, loaded, progress, signals.should_stop, cache, shrink),
        sizing["chunk"],
        on_retry=retrying,
    )
    progress.stage("writing_results", "saving result artifacts", fraction=1.0)
    prov = provenance(lease.job_id, lease.attempt, spec, request_sha256, loaded)
    prov["compute"] = {**peak_memory(device), **peak_rss(rss_reset), "estimate": sizing}
    if retries:
        prov["compute"]["cuda_oom_retries"] = [shrink.as_dict() for shrink in retries]
    return write_results(lease.job_id, spec, loaded, outcome, ctx.blobs, prov)


def _commit(lease: store.Lease, ctx: WorkerContext, results: Results) -> JobStatus | None:
    """Store the result files and mark the job succeeded, all or nothing (fenced by the lease)."""
    staged = [(output, ctx.blobs.adopt(output.path)) for output in results.outputs]
    try:
        with ctx.db.begin() as session:
            if not store.hold_lease(session, lease):
                raise _LeaseLost
            for digest in sorted({blob.sha256 for _, blob in staged}):  # one order: no deadlock
                artifacts.lock_blob(session, digest)
            entries = []
            for output, blob in staged:
                blob.commit()
                artifact = artifacts.create_artifact(
                    session,
                    tenant_id=lease.tenant_id,
                    kind=output.kind,
                    format=output.format,
                    sha256=blob.sha256,
                    size_bytes=blob.size,
                    filename=output.filename,
                    metadata=output.metadata,
                    job_id=lease.job_id,
                    expires_at=artifacts.expiry(ctx.settings.result_ttl_seconds),
                )
                entries.append(result_artifact_entry(artifact))
            result = {"artifacts": entries, "summary": results.summary, "provenance": results.provenance}
            if not store.finish_succeeded(session, lease, result):
                raise _LeaseLost
        log.info("job_succeeded", artifacts=len(entries))
        return JobStatus.SUCCEEDED
    except _LeaseLost:
        log.warning("lease_lost_before_commit")
        return None
    finally:
        for _, blob in staged:
            blob.discard()


def _stopped(lease: store.Lease, ctx: WorkerContext, signals: JobSignals) -> JobStatus | None:
    if signals.lease_lost.is_set():
        log.warning("lease_lost")
        return None
    with ctx.db.begin() as session:
        if signals.cancel_requested.is_set():
            done = store.finish_cancelled(session, lease)
            return JobStatus.CANCELLED if done else None
        return store.release(session, lease, "worker shutting down")


_STORAGE_FULL = "the blob store is full: no room for the job's files (free space, then resubmit)"


def _storage_problem(exc: BaseException) -> str | None:
    """The job's error message when ``exc`` is the blob store's fault (full, unreachable,
    holding corrupt content); None for anything else."""
    if is_storage_full(exc):
        return _STORAGE_FULL
    if isinstance(exc, StorageUnavailable):
        return f"{exc.detail}: resubmit once it is back"
    if isinstance(exc, BlobCorrupted):
        return str(exc)
    return None


def _fail(lease: store.Lease, ctx: WorkerContext, code: str, message: str) -> JobStatus | None:
    message = _redact(message, ctx)
    log.info("job_failed", code=code, message=message)
    with ctx.db.begin() as session:
        return JobStatus.FAILED if store.finish_failed(session, lease, code, message) else None


def _redact(message: str, ctx: WorkerContext) -> str:
    """No server paths in job errors."""
    for location in (ctx.blobs.location, str(ctx.blobs.root)):
        message = message.replace(location, "<blobs>")
    return message[:2000]


def release_memory() -> None:
    """Give the heap's free pages back to the OS after a job (glibc keeps them otherwise, so a
    long-lived worker's RSS would ratchet up to its largest job and fragment)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


class _LeaseLost(Exception):
    pass
