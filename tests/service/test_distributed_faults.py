"""Faults of distributed mode with real processes: a private redis-server, PostgreSQL, the API and
Celery workers (tests/stack.py). The job row is the truth, the broker only a transport, so:

* a poison job (its worker dies on every attempt) ends ``failed`` with ``worker_lost`` after the
  attempt cap, and its message does not loop in the broker;
* a broker that restarts empty (every message lost) loses no job: the sweeper republishes;
* a submission while the broker is down is accepted and runs once the broker is back;
* a job over the time limit fails ``deadline_exceeded`` (Celery's soft limit);
* a duplicate message for a finished job changes nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import time

import pytest
import redis

from tests import factories
from tests.stack import Stack

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}
QUICK = {"newton_steps": 1, "hessian_samples": 128}
SLOW = {"solver": "neumann", "max_iter": 3000, "tol": 1e-12, "newton_steps": 1, "hessian_samples": 256}
#: the whole network (``method`` "gif"): a class removal's default edits the head alone, which ran
#: all of these iterations within the time limit on a fast machine
ENDLESS = {
    "method": "gif",
    "solver": "neumann",
    "max_iter": 10_000,
    "tol": 1e-30,
    "newton_steps": 20,
    "hessian_samples": 100_000,
}
TIME_LIMIT = 4


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with Stack("distributed", tmp_path_factory.mktemp("faults")) as stack:
        yield stack


@pytest.fixture(scope="module")
def inputs(stack, files) -> dict[str, dict]:
    return stack.upload(files)


def _body(inputs: dict, cls: int, options: dict) -> dict:
    model = {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": inputs["checkpoint"]["id"]}
    return {"type": "remove", "model": model, "train": inputs["train"]["id"], "forget": {"class": cls},
            "options": options}  # fmt: skip


def _submit(stack: Stack, body: dict) -> str:
    response = stack.client.post("/v1/jobs", json=body)
    assert response.status_code == 202, response.text
    return response.json()["id"]


def _job(stack: Stack, job_id: str) -> dict:
    return stack.client.get(f"/v1/jobs/{job_id}").json()


def _wait(
    stack: Stack, job_id: str, until=lambda job: job["status"] in TERMINAL, timeout: float = 120
) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = _job(stack, job_id)
        if until(job):
            return job
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} timed out: {job}\n{stack.log_text()[-3000:]}")


def _events(stack: Stack, job_id: str) -> list[dict]:
    return stack.client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()["data"]


def _running_pid(stack: Stack, job_id: str, attempt: int) -> int:
    """The pid of the Celery pool process that claimed ``attempt`` (lease owner ``host:pid:celery``)."""
    for event in _events(stack, job_id):
        if event["type"] == "job.running" and event["data"]["attempt"] == attempt:
            return int(event["data"]["worker"].split(":")[1])
    raise AssertionError(f"attempt {attempt} of {job_id} never started")


def _broker_backlog(stack: Stack) -> dict[str, int]:
    """Messages still queued (``cpu``, ``gpu.default``) or delivered but not acknowledged."""
    client = redis.Redis.from_url(stack.redis.url)
    try:
        counts = {"gpu.default": client.llen("gpu.default"), "cpu": client.llen("cpu")}
        return {**counts, "unacked": client.hlen("unacked")}
    finally:
        client.close()


def _broker_idle(stack: Stack) -> bool:
    return not any(_broker_backlog(stack).values())


def test_poison_job_fails_worker_lost_after_the_cap_without_looping(stack, inputs):
    job_id = _submit(stack, _body(inputs, 1, SLOW))
    for attempt in (1, 2, 3):
        _wait(stack, job_id, until=lambda j, a=attempt: j["attempt"] == a and j["status"] == "running")
        os.kill(_running_pid(stack, job_id, attempt), signal.SIGKILL)  # an OOM kill, say
    job = _wait(stack, job_id, timeout=60)
    assert job["status"] == "failed" and job["error"]["code"] == "worker_lost", job
    assert job["attempt"] == 3
    # The redelivered message waits for a replacement pool process (which imports torch): on a
    # loaded 2-core machine that has taken over 30 s, so allow 90.
    deadline = time.monotonic() + 90
    while not _broker_idle(stack) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _broker_idle(stack), f"the poison job's message is still in the broker: {_broker_backlog(stack)}"
    time.sleep(2)
    assert _job(stack, job_id)["attempt"] == 3, "a redelivered message ran the failed job again"
    # the worker pool replaced its killed processes and still runs jobs
    assert _wait(stack, _submit(stack, _body(inputs, 4, QUICK)))["status"] == "succeeded"


def test_broker_restarting_empty_loses_no_job(stack, inputs):
    blocker = _submit(stack, _body(inputs, 2, SLOW))
    _wait(stack, blocker, until=lambda j: j["status"] == "running")
    waiting = [_submit(stack, _body(inputs, cls, QUICK)) for cls in (5, 6, 7)]
    broker = redis.Redis.from_url(stack.redis.url)
    deadline = time.monotonic() + 30
    while broker.llen("cpu") < 2 and time.monotonic() < deadline:  # the busy worker leaves them queued
        time.sleep(0.1)
    assert broker.llen("cpu") >= 2, "the waiting jobs' messages never reached the broker"
    broker.close()
    stack.redis.kill()
    shutil.rmtree(stack.redis.folder / "appendonlydir", ignore_errors=True)  # every message is gone
    stack.redis.start()
    for job_id in [blocker, *waiting]:
        job = _wait(stack, job_id, timeout=180)
        assert job["status"] == "succeeded", (job, stack.log_text()[-3000:])


def test_submission_while_the_broker_is_down_runs_when_it_is_back(stack, inputs):
    stack.redis.stop()
    try:
        started = time.monotonic()
        job_id = _submit(stack, _body(inputs, 8, QUICK))  # lenient dispatch: accepted all the same
        assert time.monotonic() - started < 10
        assert _job(stack, job_id)["status"] == "validating"
        assert stack.client.get("/readyz").json()["executor"]["broker"] == "unreachable"
    finally:
        stack.redis.start()
    job = _wait(stack, job_id, timeout=180)
    assert job["status"] == "succeeded", job


def test_a_job_over_the_time_limit_fails_deadline_exceeded(tmp_path, files):
    with Stack("distributed", tmp_path, extra_env={"GIF_MAX_JOB_SECONDS": str(TIME_LIMIT)}) as short:
        inputs = short.upload(files)
        job = _wait(short, _submit(short, _body(inputs, 9, ENDLESS)), timeout=TIME_LIMIT + 90)
        assert job["status"] == "failed" and job["error"]["code"] == "deadline_exceeded", job
        assert job["attempt"] == 1
        # the pool process survived its soft time limit and runs the next job
        assert _wait(short, _submit(short, _body(inputs, 4, QUICK)))["status"] == "succeeded"


def test_duplicate_message_for_a_finished_job_changes_nothing(stack, inputs):
    from jobs.config import Settings
    from workers.celery_app import RUN_TASK, VALIDATE_TASK, gpu_queue, make_app

    job_id = _submit(stack, _body(inputs, 0, QUICK))
    before = _wait(stack, job_id)
    assert before["status"] == "succeeded"
    app = make_app(Settings(broker_url=stack.redis.url))
    sent = [app.send_task(VALIDATE_TASK, args=[job_id], queue="cpu").id,
            app.send_task(RUN_TASK, args=[job_id], queue=gpu_queue("default")).id]  # fmt: skip
    # both consumed (the broker as a whole need not be idle: a message that was in flight when an
    # earlier test killed Redis may sit in `unacked` until its visibility timeout, which is
    # harmless — the outbox republished its job)
    log = stack.home / "worker0.log"
    deadline = time.monotonic() + 30
    while not all(f"[{task}] succeeded" in log.read_text(errors="replace") for task in sent):
        assert time.monotonic() < deadline, f"duplicates {sent} not consumed"
        time.sleep(0.2)
    after = _job(stack, job_id)
    assert after == before
    assert [e["type"] for e in _events(stack, job_id)].count("job.running") == 1
