"""The embedded executor: N spawned worker processes polling the job table, plus a reaper.

``gif-service serve`` starts it with the API (``jobs.executor.load_executor``). Each worker
process claims queued jobs atomically, runs them with :mod:`workers.runner` and sleeps briefly
when idle. A supervisor thread in the API process restarts a dead worker and reaps expired
leases (a killed worker's job goes back to the queue, or fails ``worker_lost`` after
``max_attempts``). Importing this module does not import torch; the worker processes do.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import socket
import threading
import time
from typing import Any

from jobs import logs, store
from jobs.blobs import open_blob_store
from jobs.config import Settings
from jobs.db import Database
from jobs.orphans import PeriodicSweep

from .terminate import kill_job_process

log = logs.get(__name__)


class LocalExecutor:
    """Spawn-context worker processes + a supervisor thread (restart, reap)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._mp = multiprocessing.get_context("spawn")
        self._halt = threading.Event()
        self._procs: list[Any] = [None] * settings.workers
        self._thread: threading.Thread | None = None
        self._db: Database | None = None
        self._orphans: PeriodicSweep | None = None
        self._stop_timeout = 10.0
        self.restarts = 0

    def start(self) -> None:
        """Reap leftovers, then start the supervisor thread, which spawns and watches the workers.

        Workers are spawned from that long-lived thread because the kernel's parent-death signal
        (see :func:`_die_with_parent`) follows the thread that created a process.
        """
        self._db = Database.for_settings(self.settings)
        self._orphans = PeriodicSweep(
            self._db, open_blob_store(self.settings), self.settings.orphan_grace_seconds
        )
        self._reap()
        self._thread = threading.Thread(target=self._run, name="gif-executor", daemon=True)
        self._thread.start()
        log.info("executor_started", workers=len(self._procs))

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM the workers (each gives its running job back to the queue), then make sure."""
        self._stop_timeout = timeout
        self._halt.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout + 10)
        if self._db is not None:
            self._db.dispose()
        log.info("executor_stopped")

    def health(self) -> dict[str, Any]:
        alive = sum(1 for p in self._procs if p is not None and p.is_alive())
        return {"executor": "local", "workers": len(self._procs), "alive": alive, "restarts": self.restarts}

    def check_accepting(self) -> None:
        """Jobs wait in the table; there is no broker to be down."""

    def submitted(self, job_id: str) -> None:
        """Nothing to do: the workers poll the job table."""

    def terminate(self, lease: store.Lease) -> int | None:
        assert self._db is not None
        return kill_job_process(self._db, lease, self.pids())  # the supervisor respawns the worker

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs if p is not None and p.pid is not None]

    def _spawn(self, index: int) -> None:
        proc = self._mp.Process(
            target=worker_main,
            args=(self.settings, index, os.getpid()),
            name=f"gif-worker-{index}",
            daemon=True,
        )
        proc.start()
        self._procs[index] = proc

    def _run(self) -> None:
        for index in range(len(self._procs)):
            self._spawn(index)
        next_reap = time.monotonic() + self.settings.reaper_seconds
        while not self._halt.wait(0.25):
            for index, proc in enumerate(self._procs):
                if proc is not None and not proc.is_alive():
                    log.warning("worker_died", index=index, exitcode=proc.exitcode)
                    self.restarts += 1
                    self._spawn(index)
            if time.monotonic() >= next_reap:
                self._reap()
                next_reap = time.monotonic() + self.settings.reaper_seconds
        self._stop_workers()

    def _stop_workers(self) -> None:
        live = [p for p in self._procs if p is not None and p.is_alive()]
        for proc in live:
            proc.terminate()
        deadline = time.monotonic() + self._stop_timeout
        for proc in live:
            proc.join(timeout=max(0.1, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2)

    def _reap(self) -> None:
        assert self._db is not None
        try:
            with self._db.begin() as session:
                outcomes = store.housekeeping(
                    session, queue_deadline_seconds=self.settings.queue_deadline_seconds
                )
        except Exception as exc:  # noqa: BLE001 (retry at the next interval)
            log.warning("reaper_failed", error=str(exc))
            return
        for job_id, status in outcomes:
            log.warning("lease_expired", job_id=job_id, status=status.value)
        if self._orphans is not None:
            self._orphans()


def worker_main(settings: Settings, index: int, parent_pid: int) -> None:
    """Entry point of a worker process; SIGTERM asks it to stop after giving its job back."""
    _die_with_parent()
    shutdown = threading.Event()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the parent, which stops us cleanly
    signal.signal(signal.SIGTERM, lambda *_: shutdown.set())
    threads = str(settings.torch_threads)
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    logs.configure()
    import torch

    torch.set_num_threads(settings.torch_threads)
    from gif._util import preload

    from .runner import IDLE, WorkerContext, run_next

    preload()

    ctx = WorkerContext.create(
        settings, owner=f"{socket.gethostname()}:{os.getpid()}:w{index}", shutdown=shutdown
    )
    log.info("worker_started", index=index, pid=os.getpid())
    while not shutdown.is_set() and os.getppid() == parent_pid:
        try:
            outcome = run_next(ctx)
        except Exception as exc:  # noqa: BLE001 (a busy database, a bug: keep polling)
            log.warning("worker_loop_error", error=f"{type(exc).__name__}: {exc}")
            outcome = IDLE
        if outcome == IDLE:
            shutdown.wait(settings.poll_seconds)
    ctx.db.dispose()
    log.info("worker_stopped", index=index)


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when the API process dies."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
