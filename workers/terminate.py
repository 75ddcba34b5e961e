"""The administrators' backstop for a job that ignores its cancellation: kill its process.

Cancelling is cooperative (the runner checks between solver iterations), so a job stuck inside
one long native call keeps its lease alive and stays ``cancelling`` until its hard time limit.
After ``GIF_CANCEL_GRACE_SECONDS`` an admin may ask the executor that owns the process to kill
it (``POST /v1/admin/jobs/{id}/terminate``). The process is identified by the lease owner
(``host:pid[:celery]``) and the kill happens only after checking, in the database, that this
lease still holds the job — a pool process may have moved on to another job — and the job is
then finished ``cancelled`` fenced by that lease's token. (Celery's ``revoke(terminate=True)``
targets a task id with no such check, which its documentation warns about.)
"""

from __future__ import annotations

import os
import signal
import socket
import time
from collections.abc import Iterable

from jobs import logs, store
from jobs.db import Database
from jobs.models import Job
from jobs.states import JobStatus

log = logs.get(__name__)


def owner_pid(owner: str) -> int | None:
    """The pid in a lease owner ``host:pid[:...]`` when the host is this machine."""
    host, _, rest = owner.partition(":")
    pid = rest.split(":", 1)[0]
    return int(pid) if host == socket.gethostname() and pid.isdigit() else None


def kill_job_process(db: Database, lease: store.Lease, pids: Iterable[int]) -> int | None:
    """SIGKILL the process holding ``lease`` if it is one of ``pids`` (this executor's) and the
    lease still holds the job; then finish the job ``cancelled``. Returns the pid killed."""
    pid = owner_pid(lease.owner)
    if pid is None or pid not in set(pids):
        return None
    with db.read() as session:
        job = session.get(Job, lease.job_id)
        if job is None or job.status != JobStatus.CANCELLING.value or job.lease_token != lease.token:
            return None  # stopped meanwhile, or the process now runs something else
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    _wait_gone(pid)
    with db.begin() as session:
        store.finish_terminated(session, lease, pid)
    log.warning("job_process_terminated", job_id=lease.job_id, pid=pid)
    return pid


def _wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Until ``pid`` has exited (a zombie counts: its parent reaps it, not us)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
            with open(f"/proc/{pid}/stat", "rb") as stat:
                if stat.read().rsplit(b")", 1)[1].split()[0] == b"Z":
                    return
        except (ProcessLookupError, FileNotFoundError):
            return
        except OSError:  # no /proc here: SIGKILL is not deferred, give it a moment
            time.sleep(0.2)
            return
        time.sleep(0.05)
