"""A chaos run: submit a batch of jobs while processes of the service are killed at random, then
check that nothing was lost, duplicated or corrupted (docs/service-design.md, "Chaos testing").

Used by ``tests/service/test_chaos.py`` (short, in CI) and ``bench/chaos.py`` (long runs).

Faults (in rounds of every kind in a random order, at random moments while jobs run):

* ``api``: SIGKILL the API process and start it again on the same port (embedded mode: its
  worker processes die with it);
* ``worker``: SIGKILL the process running a job (the lease owner's pid);
* ``pause``: SIGSTOP the process running a job for longer than its lease, then SIGCONT it: the
  job has moved to another worker, and the woken process must not write anything (fencing);
* ``worker_node``: distributed: SIGKILL a whole Celery worker node and start a new one;
* ``redis``: SIGKILL the broker and start it again on the same data folder;
* ``postgres``: distributed: SIGKILL the PostgreSQL server (postmaster and backends) and start it
  again, when the stack has a server of its own (``Stack(own_postgres=True)``); otherwise terminate
  every connection to the service's database (what clients see when it fails over).

Invariants checked afterwards: every submission (sent with an Idempotency-Key and retried across
faults) maps to exactly one job; the service lists exactly those jobs; every job is terminal —
``succeeded``, ``failed`` with an error code, or ``cancelled``; a job's artifact rows are exactly
those of its result (nothing from an attempt that lost its lease); every artifact's content
matches its SHA-256, through the API and on disk.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import signal
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests import factories
from tests.stack import Stack

TERMINAL = {"succeeded", "failed", "cancelled"}
QUICK = {"newton_steps": 1, "hessian_samples": 128}
SLOWER = {"solver": "neumann", "max_iter": 1500, "tol": 1e-12, "newton_steps": 1, "hessian_samples": 256}


@dataclass
class ChaosReport:
    mode: str
    jobs: int
    faults: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    error_codes: dict[str, int] = field(default_factory=dict)
    attempts_max: int = 0
    artifacts_checked: int = 0
    blobs_checked: int = 0
    orphans_swept: int = 0
    blobs_after_sweep: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)


def faults_for(mode: str, partitioned: bool = False) -> list[str]:
    """The fault kinds of ``mode`` (``partition``: a stack with a worker behind a link to cut)."""
    if mode == "distributed":
        return ["api", "worker", "pause", "worker_node", "redis", "postgres"] + (
            ["partition"] if partitioned else []
        )
    return ["api", "worker", "pause"]


def _request(
    stack: Stack, method: str, path: str, deadline: float, chaos: _Chaos | None = None, **kwargs
) -> httpx.Response:
    """Retry across restarts: connection errors and 5xx, until ``deadline`` (or at once when
    the fault injector itself failed: a process it restarted did not come back)."""
    headers = kwargs.pop("headers", stack.client.headers)
    while True:
        if chaos is not None and chaos.error is not None:
            raise AssertionError(f"fault injection failed: {chaos.error!r}") from chaos.error
        try:
            response = httpx.request(method, f"http://127.0.0.1:{stack.port}{path}",
                                     headers=headers, timeout=30, **kwargs)  # fmt: skip
            if response.status_code < 500 and response.status_code != 429:
                return response
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{method} {path} kept failing until the deadline")
        time.sleep(0.3)


def _body(inputs: dict, k: int) -> dict:
    """Job k of the batch (every third one runs a few seconds, so faults land mid-solve)."""
    model = {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": inputs["checkpoint"]["id"]}
    options = SLOWER if k % 3 == 0 else QUICK
    return {"type": "remove", "model": model, "train": inputs["train"]["id"], "forget": {"class": k % 10},
            "options": {**options, "seed": k}}  # fmt: skip


class _Chaos(threading.Thread):
    def __init__(
        self,
        stack: Stack,
        faults: list[str],
        rng: random.Random,
        interval: tuple[float, float],
        max_faults: int,
    ) -> None:
        super().__init__(daemon=True)
        self.stack, self.faults, self.rng, self.interval = stack, faults, rng, interval
        self.max_faults = max_faults
        self.done = threading.Event()
        self.applied: list[str] = []
        self.pending: list[str] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            tries = 0
            while len(self.applied) < self.max_faults and tries < 3 * self.max_faults:
                if self.done.wait(self.rng.uniform(*self.interval)):
                    return
                tries += 1
                fault = self._next()
                if getattr(self, f"_{fault}")():
                    self.applied.append(fault)
                    self.pending.pop(0)
                else:  # not possible now (no job running): try it again later
                    self.pending.append(self.pending.pop(0))
        except BaseException as exc:
            self.error = exc

    def _next(self) -> str:
        """Faults in rounds, each round a random order of every kind: a run with as many faults
        as kinds has one of each."""
        if not self.pending:
            self.pending = self.rng.sample(self.faults, len(self.faults))
        return self.pending[0]

    def _api(self) -> bool:
        self.stack.restart_api(wait=True)  # the next fault comes after it is back: faults, not an outage
        return True

    def _signal_a_job(self, sig: int) -> int | None:
        """Send ``sig`` to the process running some job; its pid, or None if none runs."""
        pid = _running_worker_pid(self.stack)
        if pid is None:
            return None
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return None
        return pid

    def _worker(self) -> bool:
        return self._signal_a_job(signal.SIGKILL) is not None

    def _pause(self) -> bool:
        """Freeze a job's process past its lease (a long GC pause, a hung NFS read), then let it
        run on: the job has been given to another worker meanwhile, and every write of the
        woken one must be refused (its lease token is stale)."""
        pid = self._signal_a_job(signal.SIGSTOP)
        if pid is None:
            return False
        try:
            time.sleep(float(self.stack.env.get("GIF_LEASE_SECONDS", "120")) + 2.0)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        return True

    def _worker_node(self) -> bool:
        self.stack.restart_worker(self.rng.randrange(len(self.stack.workers)))
        return True

    def _redis(self) -> bool:
        assert self.stack.redis is not None
        self.stack.redis.kill()
        time.sleep(self.rng.uniform(0.2, 2.0))
        self.stack.redis.start()
        return True

    def _partition(self) -> bool:
        """Cut the link of the worker behind it (packets vanish: its connections to Redis and
        PostgreSQL hang) for longer than a lease, then heal it: a job it held moves to the other
        side, the cut-off attempt fences itself, and the worker serves again afterwards."""
        assert self.stack.partition is not None
        lease = float(self.stack.env.get("GIF_LEASE_SECONDS", "120"))
        self.stack.partition.cut()
        try:
            time.sleep(self.rng.uniform(1.5, 3.0) * lease)
        finally:
            self.stack.partition.heal()
        return True

    def _postgres(self) -> bool:
        import psycopg

        database = self.stack.database
        assert database is not None
        if self.stack.postgres is not None:  # a server of its own: crash it, then crash recovery
            self.stack.postgres.kill()
            time.sleep(self.rng.uniform(0.2, 2.0))
            self.stack.postgres.start()
            return True
        with psycopg.connect(database.admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
                (database.name,),
            )
        return True


def _running_worker_pid(stack: Stack) -> int | None:
    """The pid in the lease owner of some running job (``host:pid:...``), if any."""
    try:
        jobs = httpx.get(f"http://127.0.0.1:{stack.port}/v1/jobs", params={"status": "running", "limit": 5},
                         headers=stack.client.headers, timeout=5).json()["data"]  # fmt: skip
        for job in jobs:
            events = httpx.get(f"http://127.0.0.1:{stack.port}/v1/jobs/{job['id']}/events",
                               params={"limit": 100}, headers=stack.client.headers, timeout=5).json()["data"]  # fmt: skip
            running = [e for e in events if e["type"] == "job.running"]
            if running:
                return int(running[-1]["data"]["worker"].split(":")[1])
    except (httpx.HTTPError, KeyError, ValueError):
        return None
    return None


def run_chaos(
    stack: Stack,
    inputs: dict,
    *,
    jobs: int,
    seed: int,
    faults: list[str] | None = None,
    interval: tuple[float, float] = (1.0, 4.0),
    max_faults: int = 10,
    timeout: float = 600,
) -> ChaosReport:
    """Submit ``jobs`` jobs while injecting up to ``max_faults`` faults, one every ``interval``
    seconds; wait for every job; check the invariants."""
    rng = random.Random(seed)
    report = ChaosReport(stack.mode, jobs)
    started = time.monotonic()
    deadline = started + timeout
    chaos = _Chaos(
        stack, faults or faults_for(stack.mode, stack.partition is not None), rng, interval, max_faults
    )
    chaos.start()
    ids: dict[str, str] = {}
    try:
        for k in range(jobs):
            key = f"chaos-{seed}-{k}"
            response = _request(stack, "POST", "/v1/jobs", deadline, chaos, json=_body(inputs, k),
                                headers={**stack.client.headers, "Idempotency-Key": key})  # fmt: skip
            assert response.status_code == 202, response.text
            ids[key] = response.json()["id"]
            time.sleep(rng.uniform(0.0, 0.5))
        chaos.join(timeout=max(1.0, deadline - time.monotonic()))  # every fault lands before the check
        finals = {key: _wait_terminal(stack, job_id, deadline, chaos) for key, job_id in ids.items()}
    finally:
        chaos.done.set()
        chaos.join(timeout=60)
    if chaos.error is not None:
        raise chaos.error
    report.faults = chaos.applied
    _check(stack, inputs, ids, finals, report, deadline)
    # files left by processes killed mid-write: the orphan sweep removes them, and nothing else
    report.orphans_swept = _sweep_orphans(stack)
    after = ChaosReport(stack.mode, jobs, problems=report.problems)
    _check(stack, inputs, ids, finals, after, deadline)
    report.blobs_after_sweep = after.blobs_checked
    report.seconds = round(time.monotonic() - started, 1)
    return report


def _wait_terminal(stack: Stack, job_id: str, deadline: float, chaos: _Chaos | None = None) -> dict:
    while True:
        job = _request(stack, "GET", f"/v1/jobs/{job_id}", deadline, chaos).json()
        if job["status"] in TERMINAL:
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} never finished: {job['status']} {job.get('progress')}")
        time.sleep(0.3)


def _check(stack: Stack, inputs: dict, ids: dict, finals: dict, report: ChaosReport, deadline: float) -> None:
    problems = report.problems
    if len(set(ids.values())) != len(ids):
        problems.append("two submissions share a job id")
    # every submission replayed with its key gives the same job: nothing duplicated
    for key, job_id in ids.items():
        k = int(key.rsplit("-", 1)[1])
        again = _request(stack, "POST", "/v1/jobs", deadline, json=_body(inputs, k),
                         headers={**stack.client.headers, "Idempotency-Key": key})  # fmt: skip
        if again.status_code != 202 or again.json()["id"] != job_id:
            problems.append(f"replaying {key} gave {again.status_code} {again.text[:200]}, not {job_id}")
    listed = _list_all(stack, deadline)
    batch = set(ids.values())
    if not batch <= listed:
        problems.append(f"jobs missing from the list: {sorted(batch - listed)}")
    for job in finals.values():
        report.statuses[job["status"]] = report.statuses.get(job["status"], 0) + 1
        report.attempts_max = max(report.attempts_max, job["attempt"])
        if job["status"] == "failed":
            code = (job.get("error") or {}).get("code")
            if not code:
                problems.append(f"{job['id']} failed without an error code")
            report.error_codes[code] = report.error_codes.get(code, 0) + 1
        if job["status"] == "succeeded":
            for entry in job["result"]["artifacts"]:
                _check_download(stack, entry, deadline, problems)
                report.artifacts_checked += 1
    for entry in inputs.values():
        _check_download(stack, {"sha256": entry["sha256"], "download_url": f"/v1/artifacts/{entry['id']}/content"},
                        deadline, problems)  # fmt: skip
        report.artifacts_checked += 1
    report.blobs_checked = _check_blobs(stack, problems)
    _check_result_rows(stack, finals, problems)


@contextlib.contextmanager
def _service_database(stack: Stack):
    """The stack's job store and blob store, opened from this process: ``(db, blobs)``."""
    from jobs.config import Settings
    from jobs.db import Database

    settings = Settings(home=stack.env["GIF_HOME"], database_url=stack.env.get("GIF_DATABASE_URL"))
    db = Database(settings.db_url)
    try:
        yield db, _blob_store(stack, Path(stack.env["GIF_HOME"]) / "blobs")
    finally:
        db.dispose()


def _blob_store(stack: Stack, root: Path):
    """The stack's blobs: its folder, or its bucket (seen through a store rooted at ``root``)."""
    from jobs.blobs import BlobStore
    from jobs.object_store import S3BlobStore

    if stack.s3 is None:
        return BlobStore(root)
    return S3BlobStore(root, stack.env["GIF_BLOB_URL"], client=stack.s3.client())


def _sweep_orphans(stack: Stack) -> int:
    """Run the service's orphan sweep with no grace period (every job is terminal by now)."""
    from jobs.orphans import sweep

    with _service_database(stack) as (db, blobs):
        return sweep(db, blobs, grace_seconds=0).blobs


def _check_result_rows(stack: Stack, finals: dict, problems: list[str]) -> None:
    """Fencing: the artifact rows a job produced are exactly its result's (none from an attempt
    that lost its lease, none for a job that did not succeed)."""
    from sqlalchemy import select

    from jobs.models import Artifact

    with _service_database(stack) as (db, _), db.read() as session:
        for job in finals.values():
            rows = set(session.scalars(select(Artifact.id).where(Artifact.job_id == job["id"])))
            listed = {a["id"] for a in (job.get("result") or {}).get("artifacts", [])}
            if rows != listed:
                problems.append(
                    f"{job['id']} ({job['status']}) has artifact rows {sorted(rows)}, result {sorted(listed)}"
                )


def _list_all(stack: Stack, deadline: float) -> set[str]:
    seen: set[str] = set()
    after = None
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        page = _request(stack, "GET", "/v1/jobs", deadline, params=params).json()
        seen.update(job["id"] for job in page["data"])
        if not page["has_more"]:
            return seen
        after = page["data"][-1]["id"]


def _check_download(stack: Stack, entry: dict, deadline: float, problems: list[str]) -> None:
    response = _request(stack, "GET", entry["download_url"], deadline)
    if response.status_code != 200 or hashlib.sha256(response.content).hexdigest() != entry["sha256"]:
        problems.append(f"{entry['download_url']}: content does not match its sha256")


def _check_blobs(stack: Stack, problems: list[str]) -> int:
    """Every stored blob holds the content its name says (a bucket's are fetched to check)."""
    from jobs.errors import BlobCorrupted

    with tempfile.TemporaryDirectory() as scratch:
        blobs = _blob_store(stack, Path(scratch) if stack.s3 else Path(stack.env["GIF_HOME"]) / "blobs")
        count = 0
        for stored in blobs.committed():
            try:
                digest = hashlib.sha256(blobs.fetch(stored.sha256).read_bytes()).hexdigest()
            except FileNotFoundError:
                continue  # deleted since it was listed
            except BlobCorrupted as exc:  # a bucket's fetch checks the digest itself
                digest = str(exc)
            if digest != stored.sha256:
                problems.append(f"blob {stored.sha256} holds content with digest {digest}")
            count += 1
        return count
