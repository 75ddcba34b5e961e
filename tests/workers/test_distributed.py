"""Distributed mode, one component at a time (no broker process): the Celery settings, the job-row
outbox, validation on the CPU worker, and the API side's behaviour when the broker is down."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import torch
from sqlalchemy import update

from jobs import store
from jobs.blobs import BlobStore
from jobs.clock import utcnow
from jobs.config import Settings
from jobs.db import Database
from jobs.errors import ServiceUnavailable
from jobs.models import Job
from jobs.states import JobStatus
from tests import factories
from workers.celery_app import RUN_TASK, VALIDATE_TASK, celery_config
from workers.dispatch import Publisher
from workers.validation import validate_job

DEAD_BROKER = "redis://127.0.0.1:1/0"  # nothing listens on port 1
ART = "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC"  # an artifact id (the job's inputs record holds the digests)


def _job(db: Database, *, request: dict | None = None, inputs: dict | None = None) -> str:
    with db.begin() as session:
        return store.create_job(
            session, tenant_id="t1", type_="remove", request=request or {"type": "remove"},
            request_sha256="0" * 64, inputs=inputs or {}, max_attempts=3,
        ).id  # fmt: skip


def _row(db: Database, job_id: str) -> Job:
    with db.read() as session:
        return store.find_job(session, job_id)


def test_celery_settings_follow_the_reliability_rules():
    conf = celery_config(Settings(broker_url="redis://x:6379/0", max_job_seconds=3600, gpu_pool="large"))
    # the visibility timeout exceeds the longest job, in all three places Celery reads it
    for value in (
        conf["visibility_timeout"],
        conf["broker_transport_options"]["visibility_timeout"],
        conf["result_backend_transport_options"]["visibility_timeout"],
    ):
        assert value == 3600 + 1800
    assert conf["task_soft_time_limit"] == 3600 and conf["task_time_limit"] == 3600 + 300
    assert conf["accept_content"] == ["json"] and conf["task_serializer"] == "json"
    assert conf["task_acks_late"] and conf["task_reject_on_worker_lost"]
    assert conf["worker_prefetch_multiplier"] == 1 and conf["task_ignore_result"]
    assert conf["task_routes"][VALIDATE_TASK]["queue"] == "cpu"
    assert conf["task_routes"][RUN_TASK]["queue"] == "gpu.large"


def test_settings_pick_the_executor_by_mode():
    assert Settings().executor_path == "workers.local:LocalExecutor"
    assert Settings(broker_url="redis://x/0").executor_path == "workers.distributed:CeleryExecutor"
    assert Settings(broker_url="redis://x/0", executor="none").executor_path == "none"


def test_outbox_lists_unpublished_and_stale_jobs(db):
    fresh, stale, published = _job(db), _job(db), _job(db)
    with db.begin() as session:
        assert store.mark_dispatched(session, published, JobStatus.VALIDATING)
        assert store.mark_dispatched(session, stale, JobStatus.VALIDATING)
        session.execute(
            update(Job).where(Job.id == stale).values(dispatched_at=utcnow() - timedelta(hours=1))
        )
        # a mark for a status the job is not in does nothing
        assert not store.mark_dispatched(session, fresh, JobStatus.QUEUED)
    with db.read() as session:
        due = {p.job_id: p.status for p in store.due_for_dispatch(session, redispatch_seconds=600)}
    assert due == {fresh: JobStatus.VALIDATING, stale: JobStatus.VALIDATING}


def test_validation_outcomes_are_compare_and_set(db):
    ok, bad = _job(db), _job(db)
    with db.begin() as session:
        assert store.finish_validation(session, ok, "t1")
        assert not store.finish_validation(session, ok, "t1")  # already queued
        assert store.fail_validation(session, bad, "t1", "checkpoint_incompatible", "no")
        assert not store.fail_validation(session, ok, "t1", "x", "queued jobs are not failed here")
    assert _row(db, ok).status == "queued" and _row(db, ok).dispatched_at is None
    row = _row(db, bad)
    assert row.status == "failed" and json.loads(row.error_json)["code"] == "checkpoint_incompatible"


def test_requeued_jobs_need_a_new_message(db):
    job_id = _job(db)
    with db.begin() as session:
        store.finish_validation(session, job_id, "t1")
        store.mark_dispatched(session, job_id, JobStatus.QUEUED)
        lease = store.claim(session, job_id, "w", lease_seconds=60)
        assert store.release(session, lease, "shutdown") is JobStatus.QUEUED
    assert _row(db, job_id).dispatched_at is None


def _stored(blobs: BlobStore, path) -> dict:
    staged = blobs.put(open(path, "rb"))
    staged.commit()
    return {"artifact_id": "art_x", "sha256": staged.sha256}


@pytest.fixture(scope="module")
def digits_files(tmp_path_factory):
    data = factories.digits()
    model = factories.train_mlp(data, epochs=2)
    return factories.write_files(tmp_path_factory.mktemp("files"), data, model)


def test_validation_loads_the_inputs_and_rejects_a_checkpoint_of_another_architecture(
    db, tmp_path, digits_files
):
    blobs = BlobStore(tmp_path / "blobs")
    inputs = {
        "checkpoint": _stored(blobs, digits_files["checkpoint"]),
        "train": _stored(blobs, digits_files["train"]),
    }

    def request(config: dict) -> dict:
        return {"type": "remove", "model": {"arch": "mlp", "config": config, "checkpoint": ART}, "train": ART,
                "forget": {"class": 3}}  # fmt: skip

    good = request(dict(factories.MLP_CONFIG))
    wrong = request(dict(factories.MLP_CONFIG, hidden_sizes=[7]))
    ok, bad = _job(db, request=good, inputs=inputs), _job(db, request=wrong, inputs=inputs)
    assert validate_job(ok, db, blobs) is JobStatus.QUEUED
    assert validate_job(ok, db, blobs) is None  # a duplicate message: no longer validating
    assert validate_job(bad, db, blobs) is JobStatus.FAILED
    error = json.loads(_row(db, bad).error_json)
    assert error["code"] == "checkpoint_incompatible", error
    # a stored request that is no longer a valid spec (an option this version does not know)
    stale = _job(db, request={**good, "options": {"momentum": 0.9}}, inputs=inputs)
    assert validate_job(stale, db, blobs) is JobStatus.FAILED
    error = json.loads(_row(db, stale).error_json)
    assert error["code"] == "invalid_request" and "options.momentum" in error["message"], error


def test_validation_sizes_the_job_against_the_memory_setting(db, tmp_path, digits_files):
    """A job over GIF_MAX_MEMORY_BYTES fails at validation, before it takes a compute slot; the
    same job under it is queued."""
    blobs = BlobStore(tmp_path / "blobs")
    inputs = {
        "checkpoint": _stored(blobs, digits_files["checkpoint"]),
        "train": _stored(blobs, digits_files["train"]),
    }
    request = {"type": "remove", "model": {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": ART},
               "train": ART, "forget": {"class": 3}}  # fmt: skip
    over, under = _job(db, request=request, inputs=inputs), _job(db, request=request, inputs=inputs)
    assert validate_job(over, db, blobs, max_memory_bytes=1024) is JobStatus.FAILED
    error = json.loads(_row(db, over).error_json)
    assert error["code"] == "memory_budget_exceeded" and "GIF_MAX_MEMORY_BYTES" in error["message"], error
    assert validate_job(under, db, blobs, max_memory_bytes=1 << 30) is JobStatus.QUEUED


def test_publishing_to_a_dead_broker_fails_fast_and_leaves_the_job_for_the_sweeper(db):
    from workers.celery_app import make_app

    settings = Settings(broker_url=DEAD_BROKER)
    job_id = _job(db)
    assert Publisher(make_app(settings), db, settings).publish(job_id, JobStatus.VALIDATING) is False
    assert _row(db, job_id).dispatched_at is None


def test_strict_dispatch_refuses_submissions_while_the_broker_is_down(tmp_path):
    from workers.distributed import CeleryExecutor

    lenient = CeleryExecutor(Settings(home=tmp_path, broker_url=DEAD_BROKER))
    lenient.check_accepting()  # accepted: the sweeper publishes later
    assert lenient.health()["broker"] == "unreachable"
    strict = CeleryExecutor(Settings(home=tmp_path, broker_url=DEAD_BROKER, strict_dispatch=True))
    with pytest.raises(ServiceUnavailable) as raised:
        strict.check_accepting()
    assert raised.value.status == 503 and raised.value.headers["Retry-After"] == "10"
    for executor in (lenient, strict):
        executor.stop()


def test_jobs_waiting_past_the_queue_deadline_fail_deadline_exceeded(db):
    old_validating, old_queued, fresh, running = _job(db), _job(db), _job(db), _job(db)
    with db.begin() as session:
        store.finish_validation(session, old_queued, "t1")
        store.finish_validation(session, running, "t1")
        store.claim(session, running, "w", lease_seconds=60)
        session.execute(
            update(Job)
            .where(Job.id.in_([old_validating, old_queued, running]))
            .values(created_at=utcnow() - timedelta(hours=2))
        )
        expired = store.expire_waiting(session, deadline_seconds=3600)
    assert sorted(expired) == sorted([old_validating, old_queued])
    for job_id in expired:
        row = _row(db, job_id)
        assert row.status == "failed" and json.loads(row.error_json)["code"] == "deadline_exceeded"
    assert _row(db, fresh).status == "validating" and _row(db, running).status == "running"


def test_each_tenant_has_a_cache_namespace_of_its_own(tmp_path):
    from gif.cache import make_key
    from workers.runner import WorkerContext

    ctx = WorkerContext.create(Settings(home=tmp_path))
    a, b = ctx.cache_for("tenant-a"), ctx.cache_for("tenant-b")
    assert ctx.cache_for("tenant-a") is a and a is not b
    key = make_key("gradient", {"same": "content"})
    a.put(key, {"g": torch.ones(3)})
    assert a.get(key) is not None and b.get(key) is None
    assert WorkerContext.create(Settings(home=tmp_path, cache=False)).cache_for("tenant-a") is None
    ctx.db.dispose()


def test_a_worker_refuses_to_start_on_a_gpu_its_torch_cannot_use(monkeypatch):
    """Told at start-up, before any job is taken (and without initialising CUDA in the parent)."""
    import torch
    from typer.testing import CliRunner

    from service.cli import app

    monkeypatch.setenv("GIF_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("GIF_DEVICE", "cuda")
    monkeypatch.setattr(torch.version, "cuda", None)  # a CPU build, whatever this machine has
    result = CliRunner().invoke(app, ["worker"])
    assert result.exit_code == 2
    assert "GIF_DEVICE=cuda, but this torch" in result.output and "built without CUDA" in result.output
