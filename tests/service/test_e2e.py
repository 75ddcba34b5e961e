"""End to end through real processes, in both running modes (parameterised ``server``):

* embedded: ``gif-service serve`` with spawned workers, SQLite under a temporary GIF_HOME;
* distributed: ``gif-service serve`` with a Celery broker, ``gif-service worker`` processes, a
  private redis-server and a PostgreSQL database of its own.

Covers the three job types, downloads with matching digests, cancelling a running job, a worker
SIGKILLed mid-solve (the job is retried and succeeds), and killing the whole service mid-job:
after a restart the job and the artifacts are intact and the job succeeds on its second attempt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import time

import httpx
import pytest
import safetensors.torch
import torch

import gif
from tests import factories
from tests.stack import Stack, job_owner_pid

pytestmark = pytest.mark.slow

TERMINAL = {"succeeded", "failed", "cancelled"}
SLOW_OPTIONS = {
    "solver": "neumann",
    "max_iter": 10_000,
    "tol": 1e-12,
    "newton_steps": 6,
    "hessian_samples": 256,
}


@pytest.fixture(scope="module", params=["embedded", "distributed"])
def server(request, tmp_path_factory):
    """The whole service in each running mode, through real processes (tests/stack.py)."""
    with Stack(request.param, tmp_path_factory.mktemp(f"e2e-{request.param}")) as stack:
        yield stack


@pytest.fixture(scope="module")
def inputs(server, files) -> dict[str, dict]:
    return server.upload(files, ("checkpoint", "train", "queries"))


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


def test_version_reports_the_running_mode(server):
    assert server.client.get("/v1/version").json()["mode"] == server.mode


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
    # the default removal of a class: FIF on the logits' layer (gif/method_choice.py)
    assert job["result"]["summary"]["solver"]["method"] == "fif"
    assert job["result"]["provenance"]["options"]["selection"] == "head"
    assert job["result"]["provenance"]["input_digests"]["checkpoint"] == inputs["checkpoint"]["sha256"]


def test_remove_with_holdout_returns_the_audit_and_its_plot(server, inputs, files):
    """The forgetting audit (docs/audit.md): the test split as holdout, the unedited checkpoint
    as reference; the audit comes back in the summary and the report, its histograms as a PNG."""
    holdout = server.upload(files, ("test",))["test"]
    body = {
        "type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"],
        "forget": {"indices": list(range(0, factories.N_TRAIN, 20))}, "holdout": holdout["id"],
        "reference": inputs["checkpoint"]["id"], "options": {"newton_steps": 1, "hessian_samples": 256},
    }  # fmt: skip
    job = _wait(server.client, _submit(server.client, body)["id"])
    assert job["status"] == "succeeded", job["error"]
    audit = job["result"]["summary"]["audit"]
    assert audit["samples"]["forget"] == factories.N_TRAIN // 20
    assert 0.0 <= audit["after"]["mia_auc"] <= 1.0 and audit["gap"]["before"]["avg_gap"] == 0.0
    plots = [e for e in job["result"]["artifacts"] if e["kind"] == "plot"]
    assert len(plots) == 2  # per-class accuracy and the audit's loss histograms
    assert all(_download(server.client, e).startswith(b"\x89PNG") for e in plots)
    report = json.loads(_download(server.client, _by_kind(job)["report"]))
    assert report["report"]["audit"]["histograms"]["edges"][0] == 0.0


def test_relabel_and_scores_end_to_end(server, inputs, digits):
    labels = [(int(y) + 1) % 10 for y in digits.y_train[:24]]  # enough for the head-first check
    relabel = _submit(server.client, {
        "type": "relabel", "model": _model_spec(inputs), "train": inputs["train"]["id"],
        "relabel": {"indices": list(range(24)), "labels": labels}, "options": {"newton_steps": 1, "hessian_samples": 256},
    })  # fmt: skip
    scores = _submit(server.client, {
        "type": "scores", "model": _model_spec(inputs), "train": inputs["train"]["id"],
        "queries": inputs["queries"]["id"], "top_k": 5, "options": {"solver": "cg", "max_iter": 10},
    })  # fmt: skip
    triage = _submit(server.client, {
        "type": "self_influence", "model": _model_spec(inputs), "train": inputs["train"]["id"], "top_k": 7,
    })  # fmt: skip
    for job_id, kinds in (
        (relabel["id"], {"weights", "report"}),
        (triage["id"], {"scores", "top_k", "report"}),
        (scores["id"], {"scores", "top_k", "report"}),
    ):
        job = _wait(server.client, job_id)
        assert job["status"] == "succeeded", job["error"]
        artifacts = _by_kind(job)
        assert kinds <= set(artifacts)
        for entry in artifacts.values():
            _download(server.client, entry)
        if job_id == relabel["id"]:  # the default relabel tried the head first; the report says what ran
            edit = json.loads(_download(server.client, artifacts["report"]))["report"]
            choice = edit["method_choice"]
            assert choice["requested"] == "auto" and choice["head_first"]["kept"] == edit["options"]["method"]
            assert edit["options"]["method"] in ("fif", "if") and "threshold" in choice["head_first"]
        if job_id == triage["id"]:  # mislabel triage: every sample's score, the top 7 highest first
            own = safetensors.torch.load(_download(server.client, artifacts["scores"]))["self_influence"]
            top = [e["index"] for e in job["result"]["summary"]["self_influence"]]
            assert (
                own.shape == (factories.N_TRAIN,)
                and top == own.argsort(descending=True, stable=True)[:7].tolist()
            )
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
    inspections = {
        start: _sample(metrics, f'gif_upload_inspections_total{{start="{start}"}}')
        for start in ("warm", "cold")
    }
    assert sum(inspections.values()) >= 3, inspections  # checkpoint, train and queries were inspected
    assert inspections["warm"] >= 1, inspections  # an interpreter started ahead served at least one


def _sample(metrics: str, series: str) -> float:
    return float(next(x for x in metrics.splitlines() if x.startswith(series)).split()[-1])


def test_a_repeated_request_is_served_from_the_cache_with_identical_weights(server, inputs):
    """Embedded mode caches on disk, distributed mode in Redis (GIF_REDIS_URL); either way the
    second run computes nothing that the first already did and writes the same bytes."""
    body = {
        "type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"],
        "forget": {"indices": list(range(20, 40))}, "options": {"newton_steps": 2, "hessian_samples": 256},
    }  # fmt: skip
    first = _wait(server.client, _submit(server.client, body)["id"])
    second = _wait(server.client, _submit(server.client, body)["id"])
    assert first["status"] == second["status"] == "succeeded", (first["error"], second["error"])
    cold, warm = first["result"]["provenance"]["cache"], second["result"]["provenance"]["cache"]
    assert {m["kind"] for m in cold["misses"]} >= {"selection", "gradient", "ihvp"}, cold
    assert warm["misses"] == [] and len(warm["hits"]) >= len(cold["misses"]), warm
    tensors = [
        safetensors.torch.load(_download(server.client, _by_kind(job)["weights"])) for job in (first, second)
    ]
    assert tensors[0].keys() == tensors[1].keys()
    assert all(torch.equal(tensors[0][name], tensors[1][name]) for name in tensors[0])  # bit for bit


def test_edits_of_other_samples_reuse_the_lowrank_fit(server, inputs):
    """With ``hessian_pool: all`` the curvature fit depends on the checkpoint and the training
    set only: a removal of other samples finds it in the cache (Redis in distributed mode)."""
    options = {
        "solver": "lowrank",
        "rank": 8,
        "newton_steps": 1,
        "hessian_samples": 256,
        "hessian_pool": "all",
    }
    jobs = []
    for indices in (list(range(50, 60)), list(range(70, 85))):
        body = {"type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"],
                "forget": {"indices": indices}, "options": options}  # fmt: skip
        jobs.append(_wait(server.client, _submit(server.client, body)["id"]))
    assert [job["status"] for job in jobs] == ["succeeded", "succeeded"], [job["error"] for job in jobs]
    cold, warm = (job["result"]["provenance"]["cache"] for job in jobs)
    assert "lowrank" in {m["kind"] for m in cold["misses"]}, cold
    assert "lowrank" in {h["kind"] for h in warm["hits"]}, warm
    assert "lowrank" not in {m["kind"] for m in warm["misses"]}, warm


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


def test_an_admin_terminates_a_job_that_ignores_its_cancellation(server, inputs):
    """A worker stuck in native code cannot see the cancel flag (SIGSTOP stands in for that);
    past the grace period an admin kills its process, the job ends ``cancelled`` at once and the
    executor runs the next job on a fresh process."""
    body = {"type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"], "forget": {"class": 6},
            "options": SLOW_OPTIONS}  # fmt: skip
    job = _submit(server.client, body)
    _wait(server.client, job["id"], until=lambda j: (j["progress"] or {}).get("stage") == "solving_ihvp")
    pid = job_owner_pid(server.client, job["id"])
    early = server.client.post(f"/v1/admin/jobs/{job['id']}/terminate")
    assert early.status_code == 409 and early.json()["code"] == "job-not-terminable"  # not cancelled yet
    try:
        assert _stop_and_cancel(server.client, pid, job["id"]).json()["status"] == "cancelling"
        done = server.client.post(f"/v1/admin/jobs/{job['id']}/terminate")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    assert done.status_code == 202, done.text
    assert done.json()["terminated_pid"] == pid and done.json()["status"] == "cancelled"
    with pytest.raises(ProcessLookupError):
        _wait_exited(pid)
    events = server.client.get(f"/v1/jobs/{job['id']}/events").json()["data"]
    assert "terminated by an administrator" in events[-1]["message"]
    again = server.client.post(f"/v1/admin/jobs/{job['id']}/terminate")
    assert again.status_code == 409 and again.json()["code"] == "job-not-terminable"
    quick = {**body, "forget": {"class": 2}, "options": {"newton_steps": 1, "hessian_samples": 128}}
    assert _wait(server.client, _submit(server.client, quick)["id"])["status"] == "succeeded"


def _stop_and_cancel(client: httpx.Client, pid: int, job_id: str, tries: int = 5) -> httpx.Response:
    """SIGSTOP the worker, then cancel its job. Code stuck in native code holds no transaction,
    but a SIGSTOP can land inside one of the worker's short writes and leave SQLite's write lock
    held: the cancel then answers 503 ``database-busy``, and the worker is resumed briefly and
    stopped again."""
    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        response = client.post(f"/v1/jobs/{job_id}/cancel")
        if response.status_code != 503:
            return response
        assert response.json()["code"] == "database-busy", response.text
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.2)
    raise AssertionError(f"the job table stayed locked through {tries} stops")


def _wait_exited(pid: int, timeout: float = 10) -> None:
    """Raises ProcessLookupError once ``pid`` is gone (reaped by its parent)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        os.kill(pid, 0)
        time.sleep(0.05)
    os.kill(pid, 0)


def test_killed_worker_is_replaced_and_its_job_retried(server, inputs):
    options = {**SLOW_OPTIONS, "max_iter": 3000, "newton_steps": 1}
    body = {"type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"], "forget": {"class": 2},
            "options": options}  # fmt: skip
    job = _submit(server.client, body)
    _wait(server.client, job["id"], until=lambda j: (j["progress"] or {}).get("stage") == "solving_ihvp")
    os.kill(job_owner_pid(server.client, job["id"]), signal.SIGKILL)
    done = _wait(server.client, job["id"], timeout=120)
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    if server.mode == "embedded":
        executor = server.client.get("/readyz").json()["executor"]
        assert executor["restarts"] >= 1 and executor["alive"] == 1
    else:
        events = server.client.get(f"/v1/jobs/{job['id']}/events", params={"limit": 100}).json()["data"]
        assert any(
            e["type"] == "job.retry_scheduled" and e["data"]["reason"] == "worker_lost" for e in events
        )


def test_restart_mid_job_keeps_jobs_and_artifacts(server, inputs):
    options = {**SLOW_OPTIONS, "max_iter": 3000, "newton_steps": 1}
    body = {"type": "remove", "model": _model_spec(inputs), "train": inputs["train"]["id"], "forget": {"class": 7},
            "options": options}  # fmt: skip
    job = _submit(server.client, body)
    _wait(server.client, job["id"], until=lambda j: (j["progress"] or {}).get("stage") == "solving_ihvp")
    server.kill()
    server.start()
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
    for line in server.log_text().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue  # uvicorn's own start-up lines are plain text
    access = [r for r in records if r.get("event") == "request" and r.get("request_id") == "req-log-check-1"]
    assert access and access[0]["route"] == "/v1/jobs" and access[0]["status"] == 200
    assert any(r.get("job_id") == job["id"] for r in records), "worker log lines carry the job id"
