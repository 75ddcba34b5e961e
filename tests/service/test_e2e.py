"""End to end through a real uvicorn server (``python -m service serve``) with spawned workers.

One server per module on a free port with a temporary GIF_HOME and short leases. Covers the
three job types, downloads with matching digests, cancelling a running job, and killing the
server mid-job: after a restart on the same GIF_HOME the job and the artifacts are intact and
the job reaches a terminal state on its second attempt.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import safetensors.torch

import gif
from tests import factories

pytestmark = pytest.mark.slow

KEY = "key-e2e-0123456789"
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"succeeded", "failed", "cancelled"}
SLOW_OPTIONS = {
    "solver": "neumann",
    "max_iter": 10_000,
    "tol": 1e-12,
    "newton_steps": 6,
    "hessian_samples": 256,
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``python -m service serve`` in a subprocess."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.log = home / "server.log"

    def start(self) -> httpx.Client:
        self.port = _free_port()
        env = dict(
            os.environ, GIF_HOME=str(self.home / "data"), GIF_API_KEYS=f"e2e:{KEY}", GIF_WORKERS="1",
            GIF_LEASE_SECONDS="3", GIF_HEARTBEAT_SECONDS="0.5", GIF_REAPER_SECONDS="0.5",
            GIF_POLL_SECONDS="0.2", GIF_PROGRESS_SECONDS="0.2", GIF_TORCH_THREADS="1",
            MPLCONFIGDIR=str(self.home / "mpl"),
        )  # fmt: skip
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service",
                    "serve",
                    "--port",
                    str(self.port),
                    "--log-level",
                    "warning",
                ],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = httpx.Client(
            base_url=f"http://127.0.0.1:{self.port}", headers={"Authorization": f"Bearer {KEY}"}, timeout=60
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if client.get("/readyz").status_code == 200:
                    return client
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise AssertionError("server did not become ready:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = Server(tmp_path_factory.mktemp("e2e"))
    client = srv.start()
    srv.client = client
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def inputs(server, files) -> dict[str, dict]:
    out = {}
    for name, kind in (("checkpoint", "checkpoint"), ("train", "dataset"), ("queries", "dataset")):
        with open(files[name], "rb") as f:
            response = server.client.post(
                "/v1/artifacts", files={"file": (files[name].name, f)}, data={"kind": kind}
            )
        assert response.status_code == 201, response.text
        out[name] = response.json()
    return out


def _model_spec(inputs) -> dict:
    return {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": inputs["checkpoint"]["id"]}


def _submit(client: httpx.Client, body: dict) -> dict:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()


def _wait(
    client: httpx.Client, job_id: str, until=lambda job: job["status"] in TERMINAL, timeout: float = 120
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} timed out in state {job['status']}: {job.get('progress')}")


def _download(client: httpx.Client, entry: dict) -> bytes:
    response = client.get(entry["download_url"])
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == entry["sha256"]
    assert response.headers["etag"] == f'"sha256:{entry["sha256"]}"'
    return response.content


def _by_kind(job: dict) -> dict[str, dict]:
    return {entry["kind"]: entry for entry in job["result"]["artifacts"]}


def test_remove_class_end_to_end(server, inputs, digits):
    body = {
        "type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"], "forget": {"class": 3},
        "options": {"newton_steps": 1, "hessian_samples": 256},
    }  # fmt: skip
    job = _wait(server.client, _submit(server.client, body)["id"])
    assert job["status"] == "succeeded", job["error"]
    artifacts = _by_kind(job)
    assert set(artifacts) >= {"weights", "report"}
    model = gif.models.build("mlp", **factories.MLP_CONFIG)
    model.load_state_dict(safetensors.torch.load(_download(server.client, artifacts["weights"])))
    per_class = factories.accuracy_by_class(model, digits.x_test, digits.y_test)
    assert per_class[3] <= 0.10, per_class
    assert min(acc for cls, acc in enumerate(per_class) if cls != 3) >= 0.85, per_class
    for entry in artifacts.values():
        _download(server.client, entry)
    assert job["result"]["summary"]["solver"]["method"] == "gif"
    assert job["result"]["provenance"]["input_digests"]["checkpoint"] == inputs["checkpoint"]["sha256"]


def test_relabel_and_scores_end_to_end(server, inputs, digits):
    labels = [(int(y) + 1) % 10 for y in digits.y_train[:8]]
    relabel = _submit(server.client, {
        "type": "relabel", "model": _model_spec(inputs), "train": inputs["train"]["id"],
        "relabel": {"indices": list(range(8)), "labels": labels}, "options": {"newton_steps": 1, "hessian_samples": 256},
    })  # fmt: skip
    scores = _submit(server.client, {
        "type": "scores", "model": _model_spec(inputs), "train": inputs["train"]["id"],
        "queries": inputs["queries"]["id"], "top_k": 5, "options": {"solver": "cg", "max_iter": 10},
    })  # fmt: skip
    for job_id, kinds in (
        (relabel["id"], {"weights", "report"}),
        (scores["id"], {"scores", "top_k", "report"}),
    ):
        job = _wait(server.client, job_id)
        assert job["status"] == "succeeded", job["error"]
        artifacts = _by_kind(job)
        assert kinds <= set(artifacts)
        for entry in artifacts.values():
            _download(server.client, entry)
    matrix = safetensors.torch.load(_download(server.client, _by_kind(job)["scores"]))["scores"]
    assert tuple(matrix.shape) == (4, factories.N_TRAIN)
    metrics = server.client.get("/metrics").text
    for series in (
        'gif_job_run_seconds_count{status="succeeded",type="relabel"}',
        'gif_job_queue_wait_seconds_count{type="scores"}',
        'gif_ihvp_iterations_count{type="relabel"}',
    ):
        line = next(x for x in metrics.splitlines() if x.startswith(series))
        assert float(line.split()[-1]) >= 1, line


def test_cancel_a_running_job(server, inputs):
    body = {"type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"], "forget": {"class": 5},
            "options": SLOW_OPTIONS}  # fmt: skip
    job = _submit(server.client, body)
    running = _wait(
        server.client, job["id"], until=lambda j: (j["progress"] or {}).get("stage") == "solving_ihvp"
    )
    assert running["status"] == "running" and "residual" in running["progress"]["message"]
    asked = server.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert asked.status_code == 202 and asked.json()["status"] in ("cancelling", "cancelled")
    start = time.monotonic()
    done = _wait(server.client, job["id"], timeout=15)
    assert done["status"] == "cancelled" and time.monotonic() - start < 5
    assert server.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 202
    events = [e["type"] for e in server.client.get(f"/v1/jobs/{job['id']}/events").json()["data"]]
    assert events[-2:] == ["job.cancel_requested", "job.cancelled"]


def _worker_pids(server: Server) -> list[int]:
    """The server's spawned worker processes, found through /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server.proc.pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return pids


def test_killed_worker_is_replaced_and_its_job_retried(server, inputs):
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs /proc to find the worker process")
    options = {**SLOW_OPTIONS, "max_iter": 3000, "newton_steps": 1}
    body = {"type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"], "forget": {"class": 2},
            "options": options}  # fmt: skip
    job = _submit(server.client, body)
    _wait(server.client, job["id"], until=lambda j: (j["progress"] or {}).get("stage") == "solving_ihvp")
    (pid,) = _worker_pids(server)
    os.kill(pid, signal.SIGKILL)
    done = _wait(server.client, job["id"], timeout=120)
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    executor = server.client.get("/readyz").json()["executor"]
    assert executor["restarts"] >= 1 and executor["alive"] == 1


def test_restart_mid_job_keeps_jobs_and_artifacts(server, inputs):
    options = {**SLOW_OPTIONS, "max_iter": 3000, "newton_steps": 1}
    body = {"type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"], "forget": {"class": 7},
            "options": options}  # fmt: skip
    job = _submit(server.client, body)
    _wait(server.client, job["id"], until=lambda j: (j["progress"] or {}).get("stage") == "solving_ihvp")
    server.kill()
    assert (server.home / "data" / "gif.db").is_file()
    server.client = server.start()
    survived = server.client.get(f"/v1/jobs/{job['id']}").json()
    assert survived["status"] in ("running", "queued") and survived["attempt"] == 1
    for entry in inputs.values():
        assert (
            hashlib.sha256(server.client.get(f"/v1/artifacts/{entry['id']}/content").content).hexdigest()
            == entry["sha256"]
        )
    done = _wait(server.client, job["id"], timeout=120)
    assert done["status"] == "succeeded", done["error"]
    assert done["attempt"] == 2
    events = [
        e["type"]
        for e in server.client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
    ]
    assert "job.retry_scheduled" in events and events[-1] == "job.succeeded"


def test_json_logs_carry_request_and_job_ids(server, inputs):
    response = server.client.get("/v1/jobs", headers={"X-Request-ID": "req-log-check-1"})
    assert response.headers["x-request-id"] == "req-log-check-1"
    job = _wait(server.client, _submit(server.client, {
        "type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"],
        "forget": {"indices": [0, 1, 2]}, "options": {"newton_steps": 1, "hessian_samples": 128},
    })["id"])  # fmt: skip
    assert job["status"] == "succeeded", job["error"]
    records = []
    for line in server.log.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # uvicorn's own start-up lines are plain text
    access = [r for r in records if r.get("event") == "request" and r.get("request_id") == "req-log-check-1"]
    assert access and access[0]["route"] == "/v1/jobs" and access[0]["status"] == 200
    assert any(r.get("job_id") == job["id"] for r in records), "worker log lines carry the job id"
