"""A network partition, with real sockets: a Celery worker in a network namespace loses its link
to Redis and PostgreSQL in the middle of a job (packets vanish; nothing is closed or refused).

Expected: the cut-off worker notices within its database timeout and stops (self-fencing); the
API's sweeper reaps the lease and the job runs again on a worker on the right side; once the
link is back, the cut-off worker serves new jobs. (That a woken attempt writes nothing is the
chaos runs' ``pause`` fault.)
"""

from __future__ import annotations

import time

import httpx
import pytest

from tests import factories
from tests.stack import Stack, _children, job_owner_pid

pytestmark = pytest.mark.slow

#: Longer than the test: cancelled once it has moved to the worker on the right side.
SLOW = {"solver": "neumann", "max_iter": 10_000, "tol": 1e-30, "newton_steps": 1, "hessian_samples": 256}
QUICK = {"newton_steps": 1, "hessian_samples": 128}


def _body(inputs: dict, cls: int, options: dict) -> dict:
    model = {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": inputs["checkpoint"]["id"]}
    return {"type": "remove", "model": model, "train": inputs["train"]["id"], "forget": {"class": cls},
            "options": options}  # fmt: skip


def _wait(client: httpx.Client, job_id: str, until=None, timeout: float = 180) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if (until or (lambda j: j["status"] in ("succeeded", "failed", "cancelled")))(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.2)


def test_a_worker_cut_off_mid_job_self_fences_and_the_job_moves_to_the_other_side(tmp_path, files):
    env = {"GIF_DATABASE_TIMEOUT_SECONDS": "4"}
    with Stack("distributed", tmp_path, workers=2, partitioned_workers=1, extra_env=env) as stack:
        client, inside = stack.client, stack.workers[1]
        inputs = stack.upload(files)
        stack.workers[0].stop()  # only the worker behind the link takes the job
        job_id = client.post("/v1/jobs", json=_body(inputs, 3, SLOW)).json()["id"]
        _wait(client, job_id, until=lambda j: (j["progress"] or {}).get("stage") == "solving_ihvp")
        assert job_owner_pid(client, job_id) in _children(inside.proc.pid)
        stack.workers[0] = stack.start_worker(0)

        stack.partition.cut()
        try:
            # the cut-off worker stops on its own; the sweeper hands the job to the other worker
            log = stack.home / "worker1.log"
            moved = _wait(client, job_id, until=lambda j: j["attempt"] == 2 and j["status"] == "running"
                          and "lease_expired_unrenewed" in log.read_text(errors="replace"), timeout=90)  # fmt: skip
            assert job_owner_pid(client, job_id) not in _children(inside.proc.pid), moved
        finally:
            stack.partition.heal()
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 202
        assert _wait(client, job_id)["status"] == "cancelled"
        events = [
            e["type"] for e in client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        ]
        assert "job.retry_scheduled" in events

        # back on the network, the worker that was cut off serves again (the other one is stopped)
        stack.workers[0].stop()
        again = _wait(client, client.post("/v1/jobs", json=_body(inputs, 4, QUICK)).json()["id"])
        assert again["status"] == "succeeded" and job_owner_pid(client, again["id"]) in _children(
            inside.proc.pid
        )
