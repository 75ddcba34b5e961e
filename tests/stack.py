"""Real processes for end-to-end tests: a private redis-server, a private PostgreSQL database,
``gif-service serve`` and ``gif-service worker``, each on free ports under a temporary folder.

Nothing here touches another test run's state: redis runs on its own port and data folder, and
every stack gets a database of its own (created and dropped here) on the machine's PostgreSQL
(``GIF_TEST_POSTGRES``, default ``postgresql://postgres@127.0.0.1:5432/postgres``; ``.ci/run``
starts the server when it is not running).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import ClassVar

import httpx

ROOT = Path(__file__).resolve().parents[1]
KEY = "key-e2e-0123456789"
ADMIN_URLS = (
    os.environ.get("GIF_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres"),
    "postgresql://root@127.0.0.1:5432/postgres",
    "postgresql://root@127.0.0.1:5432/test",
)

#: Short leases and intervals, so that faults resolve in seconds.
FAST = dict(
    GIF_LEASE_SECONDS="3", GIF_HEARTBEAT_SECONDS="0.5", GIF_REAPER_SECONDS="0.5",
    GIF_POLL_SECONDS="0.2", GIF_PROGRESS_SECONDS="0.2", GIF_TORCH_THREADS="1",
    GIF_REDISPATCH_SECONDS="5", GIF_CANCEL_GRACE_SECONDS="0",
)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, log: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}:\n{_tail(log)}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"port {port} never opened:\n{_tail(log)}")


def _tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


def _stop(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(sig)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


class RedisServer:
    """``redis-server`` on a free port; ``appendonly`` like the production broker config."""

    def __init__(self, folder: Path, *, appendonly: bool = True, also_bind: str | None = None) -> None:
        self.folder, self.appendonly, self.also_bind = folder, appendonly, also_bind
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log = folder / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (apt-get install redis-server)"
        bind = ["127.0.0.1", *([self.also_bind, "--protected-mode", "no"] if self.also_bind else [])]
        args = [binary, "--port", str(self.port), "--bind", *bind, "--dir", str(self.folder),
                "--save", "", "--appendonly", "yes" if self.appendonly else "no",
                "--appendfsync", "always", "--maxmemory-policy", "noeviction", "--logfile", str(self.log)]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_port(self.port, self.proc, self.log)
        return self

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.proc)


class S3Server:
    """An S3-compatible server process (moto's) on a free port, with one bucket; it keeps
    objects in memory, so ``kill`` loses them (an outage test needs only the refusal)."""

    CREDENTIALS: ClassVar[dict[str, str]] = {"AWS_ACCESS_KEY_ID": "gif-test", "AWS_SECRET_ACCESS_KEY": "gif-test-secret",
                   "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip

    def __init__(self, folder: Path, bucket: str = "gif-blobs") -> None:
        self.folder, self.bucket = folder, bucket
        folder.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = folder / "s3.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a service process needs to keep its blobs in the bucket."""
        return {
            **self.CREDENTIALS,
            "GIF_BLOB_URL": f"s3://{self.bucket}/gif",
            "GIF_S3_ENDPOINT_URL": self.endpoint,
        }

    def start(self) -> S3Server:
        binary = Path(sys.executable).parent / "moto_server"
        assert binary.exists(), "moto_server is not installed (pip install 'moto[server]')"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        _wait_port(self.port, self.proc, self.log)
        self.client().create_bucket(Bucket=self.bucket)
        return self

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.CREDENTIALS["AWS_ACCESS_KEY_ID"],
                            aws_secret_access_key=self.CREDENTIALS["AWS_SECRET_ACCESS_KEY"])  # fmt: skip

    def keys(self, prefix: str = "") -> list[str]:
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def kill(self) -> None:
        _stop(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        _stop(self.proc)


class PostgresDatabase:
    """A database of its own on the machine's PostgreSQL (or on ``server``), dropped afterwards."""

    def __init__(self, server: PostgresServer | None = None) -> None:
        import psycopg

        self.name = f"gif_test_{secrets.token_hex(6)}"
        errors = []
        for admin in [server.admin] if server else ADMIN_URLS:
            try:
                with psycopg.connect(admin, autocommit=True, connect_timeout=3) as conn:
                    conn.execute(f'CREATE DATABASE "{self.name}"')
                self.admin = admin
                break
            except psycopg.OperationalError as exc:
                errors.append(f"{admin}: {exc}")
        else:
            raise AssertionError(
                "no PostgreSQL reachable (start it, or set GIF_TEST_POSTGRES):\n" + "\n".join(errors)
            )
        base = self.admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        self.url = f"{base}/{self.name}"

    def drop(self) -> None:
        import psycopg

        with psycopg.connect(self.admin, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class PostgresServer:
    """A PostgreSQL cluster of its own (``initdb`` in a temporary folder, a free port),
    so that a test can SIGKILL the whole server and start it again (crash recovery) without
    touching the machine's PostgreSQL. Runs as the ``postgres`` user when the tests run as root."""

    def __init__(self, also_listen: tuple[str, str] | None = None) -> None:
        """``also_listen``: (address, client address) — listen there too and trust that client."""
        self.also_listen = also_listen
        binaries = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
        found = shutil.which("initdb") or (str(binaries[-1]) if binaries else None)
        assert found, "PostgreSQL server binaries are not installed (apt-get install postgresql)"
        self.bin = Path(found).parent
        self.folder = Path(tempfile.mkdtemp(prefix="gif-pg-"))
        self.port = free_port()
        self.user = "postgres" if os.geteuid() == 0 else None
        self.log = self.folder / "postgres.log"
        self.proc: subprocess.Popen | None = None
        if self.user:
            shutil.chown(self.folder, self.user)
        done = subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.folder / "data"), "-U", "postgres", "-A", "trust",
             "--no-sync", "-E", "UTF8"],
            capture_output=True, text=True, check=False, user=self.user, cwd=self.folder,
        )  # fmt: skip
        assert done.returncode == 0, f"initdb failed: {done.stdout}{done.stderr}"
        if also_listen:
            with open(self.folder / "data" / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {also_listen[1]}/32 trust\n")

    @property
    def admin(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @property
    def _listen(self) -> str:
        return ",".join(["127.0.0.1", *([self.also_listen[0]] if self.also_listen else [])])

    def start(self) -> PostgresServer:
        args = [str(self.bin / "postgres"), "-D", str(self.folder / "data"), "-p", str(self.port),
                "-c", f"listen_addresses={self._listen}", "-k", str(self.folder),
                "-c", "fsync=off", "-c", "max_connections=200"]  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=log, user=self.user, cwd=self.folder)
        _wait_port(self.port, self.proc, self.log, timeout=60)
        self._wait_accepting(timeout=60)  # crash recovery runs after the port opens
        return self

    def _wait_accepting(self, timeout: float) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.admin, connect_timeout=3):
                    return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"PostgreSQL never accepted connections:\n{_tail(self.log)}"
                    ) from None
                time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the postmaster and every backend at once (a host crash); the next start runs
        crash recovery."""
        if self.proc is None or self.proc.poll() is not None:
            return
        backends = _children(self.proc.pid)
        self.proc.kill()
        for pid in backends:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        # the dead backends may linger as zombies until init reaps them; their pids in the lock
        # files would make the next postmaster refuse to start
        for lock in [self.folder / "data" / "postmaster.pid", *self.folder.glob(".s.PGSQL.*")]:
            lock.unlink(missing_ok=True)

    def close(self) -> None:
        _stop(self.proc, signal.SIGINT)  # fast shutdown
        shutil.rmtree(self.folder, ignore_errors=True)


TERMINAL = ("succeeded", "failed", "cancelled")


def wait_finished(client: httpx.Client, job_id: str, timeout: float = 300) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job is terminal; its last state when it is not in time."""
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in TERMINAL:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"job {job_id} still {job['status']} after {timeout} s: {job.get('progress')}"
            )
        time.sleep(0.2)
    return job


def job_owner_pid(client: httpx.Client, job_id: str) -> int:
    """The pid of the process that last claimed the job: its lease owner is ``host:pid[:...]``."""
    events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
    owner = [e for e in events if e["type"] == "job.running"][-1]["data"]["worker"]
    return int(owner.split(":")[1])


def _children(pid: int) -> list[int]:
    """Pids whose parent is ``pid`` (from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


class Partition:
    """A network namespace joined to the host by a veth pair: a process started in it reaches the
    host's services at ``host_ip`` only; ``cut()`` takes the link down (a partition: packets
    vanish, connections hang) and ``heal()`` brings it back. Needs root and iproute2."""

    def __init__(self) -> None:
        tag = secrets.token_hex(3)  # interface names are at most 15 characters
        self.name, self.host_if, self.ns_if = f"gifp-{tag}", f"gh{tag}", f"gn{tag}"
        subnet = f"10.{200 + secrets.randbelow(50)}.{secrets.randbelow(256)}"
        self.host_ip, self.ns_ip = f"{subnet}.1", f"{subnet}.2"
        self._ip("netns", "add", self.name)
        self._ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        self._ip("link", "set", self.ns_if, "netns", self.name)
        self._ip("addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        self._ip("link", "set", self.host_if, "up")
        for args in (("addr", "add", f"{self.ns_ip}/30", "dev", self.ns_if), ("link", "set", self.ns_if, "up"),
                     ("link", "set", "lo", "up")):  # fmt: skip
            self._ip("netns", "exec", self.name, "ip", *args)

    @property
    def prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def cut(self) -> None:
        self._ip("link", "set", self.host_if, "down")

    def heal(self) -> None:
        self._ip("link", "set", self.host_if, "up")

    def close(self) -> None:
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)

    @staticmethod
    def _ip(*args: str) -> None:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
        assert done.returncode == 0, f"ip {' '.join(args)}: {done.stderr} (network namespaces need root)"


class Process:
    """A ``python -m service ...`` subprocess writing to its own log file."""

    def __init__(
        self, args: list[str], env: dict[str, str], log: Path, prefix: list[str] | None = None
    ) -> None:
        """``prefix``: a command that runs it (``ip netns exec NAME``, which execs: same pid)."""
        self.args, self.env, self.log, self.prefix = args, env, log, prefix or []
        self.proc: subprocess.Popen | None = None

    def start(self) -> Process:
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "service", *self.args], cwd=ROOT, env=self.env,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (a Celery worker's pool children included)."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def stop(self, timeout: float = 30) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()


_SERVICE_URLS = ("GIF_BROKER_URL", "GIF_REDIS_URL", "GIF_DATABASE_URL")


class Stack:
    """The service in one running mode: ``embedded`` (API + spawned workers, SQLite) or
    ``distributed`` (API + Celery workers, redis broker, PostgreSQL)."""

    def __init__(
        self,
        mode: str,
        home: Path,
        *,
        workers: int = 1,
        extra_env: dict[str, str] | None = None,
        own_postgres: bool = False,
        partitioned_workers: int = 0,
        bucket: bool = False,
    ) -> None:
        """``own_postgres``: distributed mode on a PostgreSQL server of its own, which
        ``postgres.kill()`` may crash (otherwise a database on the machine's server).
        ``partitioned_workers``: the last N Celery workers run in a network namespace
        (``self.partition``) that reaches Redis and that server only through a link the test can
        cut (implies ``own_postgres``).
        ``bucket``: blobs in an S3-compatible server's bucket (``self.s3``), and every process
        with a data folder of its own, as on hosts that share no filesystem."""
        self.mode, self.home, self.n_workers = mode, home, workers
        home.mkdir(parents=True, exist_ok=True)
        self.env = dict(
            os.environ, GIF_HOME=str(home / "data"), GIF_API_KEYS=f"e2e:{KEY}", GIF_ADMIN_TENANTS="e2e",
            MPLCONFIGDIR=str(home / "mpl"), **FAST, **(extra_env or {}),
        )  # fmt: skip
        self.redis: RedisServer | None = None
        self.database: PostgresDatabase | None = None
        self.postgres: PostgresServer | None = None
        self.partition = Partition() if partitioned_workers else None
        self.partitioned_workers = partitioned_workers
        self.s3 = S3Server(home / "s3").start() if bucket else None
        if self.s3 is not None:
            self.env.update(self.s3.env)
        if mode == "distributed":
            outside = (self.partition.host_ip, self.partition.ns_ip) if self.partition else None
            self.redis = RedisServer(home / "redis", also_bind=outside and outside[0]).start()
            own = own_postgres or self.partition is not None
            self.postgres = PostgresServer(also_listen=outside).start() if own else None
            self.database = PostgresDatabase(self.postgres)
            self.env.update(
                GIF_BROKER_URL=self.redis.url,
                GIF_REDIS_URL=self.redis.url.replace("/0", "/1"),  # the gradient cache: a DB of its own
                GIF_DATABASE_URL=self.database.url,
            )
        else:
            self.env.update(GIF_WORKERS=str(workers))
        self.port = 0
        self.api: Process | None = None
        self.workers: list[Process] = []
        self.client: httpx.Client | None = None

    @property
    def logs(self) -> list[Path]:
        return sorted(self.home.glob("*.log"))

    def log_text(self) -> str:
        return "\n".join(path.read_text(errors="replace") for path in self.logs)

    def start(self) -> httpx.Client:
        self.port = free_port()
        self.api = self._start_api()
        if self.mode == "distributed":
            self.workers = [self.start_worker(k) for k in range(self.n_workers)]
        self.client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        )
        self._wait_ready()
        return self.client

    def upload(
        self, files: dict[str, Path], names: tuple[str, ...] = ("checkpoint", "train")
    ) -> dict[str, dict]:
        """Upload fixture files (``checkpoint`` is a checkpoint, anything else a dataset)."""
        out = {}
        for name in names:
            kind = "checkpoint" if name == "checkpoint" else "dataset"
            with open(files[name], "rb") as f:
                response = self.client.post(
                    "/v1/artifacts", files={"file": (files[name].name, f)}, data={"kind": kind}
                )
            assert response.status_code == 201, response.text
            out[name] = response.json()
        return out

    def _start_api(self) -> Process:
        return Process(["serve", "--port", str(self.port), "--log-level", "warning"], self.env,
                       self.home / "api.log").start()  # fmt: skip

    def restart_api(self, *, wait: bool = True) -> None:
        """SIGKILL the API process (embedded: its workers die with it) and start it on the same port."""
        assert self.api is not None
        self.api.kill()
        self.api = self._start_api()
        if wait:
            self._wait_ready()

    def restart_worker(self, index: int) -> None:
        """SIGKILL a Celery worker node (parent and pool children) and start a new one."""
        self.workers[index].kill()
        self.workers[index] = self.start_worker(index)

    def start_worker(self, index: int) -> Process:
        name = f"w{index}-{secrets.token_hex(3)}@%h"
        env, prefix = self.env, None
        if self.partition is not None and index >= self.n_workers - self.partitioned_workers:
            # inside the namespace: the same services, reached at the host end of the link
            env = {k: v.replace("127.0.0.1", self.partition.host_ip) if k in _SERVICE_URLS else v
                   for k, v in self.env.items()}  # fmt: skip
            prefix = self.partition.prefix
        if self.s3 is not None:
            env = {**env, "GIF_HOME": str(self.home / f"worker{index}-data")}
        return Process(["worker", "--name", name, "--log-level", "INFO"], env,
                       self.home / f"worker{index}.log", prefix).start()  # fmt: skip

    def _wait_ready(self, timeout: float = 90) -> None:
        assert self.api is not None and self.client is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.api.alive(), self.log_text()[-4000:]
            for worker in self.workers:
                assert worker.alive(), self.log_text()[-4000:]
            try:
                if self.client.get("/readyz").status_code == 200 and self._workers_ready():
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("stack did not become ready:\n" + self.log_text()[-4000:])

    def _workers_ready(self) -> bool:
        """Distributed: every Celery worker has connected and consumes (its 'ready' line)."""
        if self.mode != "distributed":
            return True
        return all(b"ready" in path.read_bytes() for path in self.home.glob("worker*.log"))

    def kill(self) -> None:
        """SIGKILL the API and every worker (a crash of the whole service)."""
        for proc in [self.api, *self.workers]:
            if proc is not None:
                proc.kill()

    def stop(self) -> None:
        for proc in [*self.workers, self.api]:
            if proc is not None:
                proc.stop()
        if self.client is not None:
            self.client.close()

    def close(self) -> None:
        self.stop()
        if self.redis is not None:
            self.redis.stop()
        if self.database is not None:
            self.database.drop()
        if self.postgres is not None:
            self.postgres.close()
        if self.partition is not None:
            self.partition.close()
        if self.s3 is not None:
            self.s3.stop()

    def __enter__(self) -> Stack:
        """``with Stack(...) as stack:`` — started on entry, everything closed on exit."""
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
