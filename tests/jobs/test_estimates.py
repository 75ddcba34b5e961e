"""A job's estimate from the tenant's succeeded jobs like it (jobs/estimates.py): the same type,
inputs and options, whatever samples they edit."""

from __future__ import annotations

import json
from datetime import timedelta

from jobs import estimates, specs, store
from jobs.clock import utcnow
from jobs.submit import submit_job
from jobs.views import job_view

from .conftest import TENANT, add_checkpoint, add_dataset


def _body(checkpoint: str, train: str, cls: int, **options: object) -> dict:
    return {
        "type": "remove", "model": {"arch": "mlp", "checkpoint": checkpoint}, "train": train,
        "forget": {"class": cls}, "options": options,
    }  # fmt: skip


def _submit(db, settings, body: dict) -> str:
    return submit_job(db, settings, TENANT, specs.parse(body), fingerprint=f"f{utcnow().timestamp()}").job.id


def _succeeded(db, job_id: str, seconds: float, work: dict | None = None, status: str = "succeeded") -> None:
    """``job_id`` finished ``status`` after ``seconds`` of running, its summary's work ``work``."""
    with db.begin() as session:
        job = store.require_job(session, TENANT, job_id)
        job.status, job.started_at = status, utcnow()
        job.finished_at = job.started_at + timedelta(seconds=seconds)
        job.result_json = json.dumps({"artifacts": [], "summary": {"work": work} if work else {}})


def _estimate(db, job_id: str) -> dict | None:
    with db.read() as session:
        return job_view(store.require_job(session, TENANT, job_id))["estimate"]


def test_a_first_job_has_no_estimate(db, settings):
    job = _submit(db, settings, _body(add_checkpoint(db), add_dataset(db), 3))
    assert _estimate(db, job) is None


def test_the_estimate_is_the_median_of_the_succeeded_jobs_like_it(db, settings):
    checkpoint, train = add_checkpoint(db), add_dataset(db)
    for cls, seconds, hvps in ((1, 10.0, 40), (2, 30.0, 60), (4, 20.0, 50)):
        _succeeded(
            db,
            _submit(db, settings, _body(checkpoint, train, cls)),
            seconds,
            {"gradients": cls, "hvps": hvps},
        )
    _succeeded(db, _submit(db, settings, _body(checkpoint, train, 5)), 999.0, status="failed")  # not counted
    job = _submit(db, settings, _body(checkpoint, train, 3))  # another class: alike
    assert _estimate(db, job) == {"seconds": 20.0, "based_on": 3, "work": {"gradients": 2, "hvps": 50}}


def test_other_options_or_other_inputs_are_not_alike(db, settings):
    checkpoint, train = add_checkpoint(db), add_dataset(db)
    _succeeded(db, _submit(db, settings, _body(checkpoint, train, 1)), 10.0)
    assert _estimate(db, _submit(db, settings, _body(checkpoint, train, 2, newton_steps=2))) is None
    with db.begin() as session:  # a training set of other content
        from jobs import artifacts

        other = artifacts.create_artifact(
            session, tenant_id=TENANT, kind="dataset", format="safetensors", sha256="c" * 64, size_bytes=1,
            metadata={"n_samples": 100, "input_shape": [1, 8, 8], "label_counts": [10] * 10},
        ).id  # fmt: skip
    assert _estimate(db, _submit(db, settings, _body(checkpoint, other, 2))) is None
    # the same content uploaded again is the same input
    assert _estimate(db, _submit(db, settings, _body(checkpoint, add_dataset(db), 2))) == {
        "seconds": 10.0, "based_on": 1,
    }  # fmt: skip


def test_the_estimate_rests_on_the_most_recent_jobs(db, settings, monkeypatch):
    monkeypatch.setattr(estimates, "BASED_ON", 2)
    checkpoint, train = add_checkpoint(db), add_dataset(db)
    for cls, seconds in ((1, 100.0), (2, 10.0), (4, 20.0)):
        _succeeded(db, _submit(db, settings, _body(checkpoint, train, cls)), seconds)
    assert _estimate(db, _submit(db, settings, _body(checkpoint, train, 3))) == {
        "seconds": 15.0,
        "based_on": 2,
    }
