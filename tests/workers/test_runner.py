"""The job runner in-process: spec → engine → result artifacts, error codes, cancel, shutdown, fencing."""

from __future__ import annotations

import dataclasses
import json

import pydantic
import pytest
import safetensors.torch
import torch

import gif
from jobs import artifacts, specs, store
from jobs.states import JobStatus
from tests import factories
from workers.runner import execute, run_job

from .conftest import TENANT, register, register_digits, submit


@pytest.fixture
def inputs(ctx, tmp_path, data, model):
    return register_digits(ctx, tmp_path / "files", data, model, "queries")


def _body(inputs, **changes):
    body = {
        "type": "remove", "model": {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": inputs["checkpoint"]},
        "train": inputs["train"], "forget": {"class": 3}, "options": {"newton_steps": 1, "hessian_samples": 256},
    }  # fmt: skip
    body.update(changes)
    return body


def _job(ctx, job_id):
    with ctx.db.read() as session:
        return store.require_job(session, TENANT, job_id)


def _result_files(ctx, job) -> dict[str, bytes]:
    result = json.loads(job.result_json)
    out = {}
    for entry in result["artifacts"]:
        with ctx.db.read() as session:
            art = artifacts.get_artifact(session, TENANT, entry["id"])
        assert art.job_id == job.id and art.sha256 == entry["sha256"]
        out[entry["kind"]] = ctx.blobs.path(art.sha256).read_bytes()
    return out


def test_remove_class_produces_weights_report_and_plot(ctx, inputs, data):
    job_id = submit(ctx, _body(inputs))
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    job = _job(ctx, job_id)
    files = _result_files(ctx, job)
    assert set(files) == {"weights", "report", "plot"} and files["plot"].startswith(b"\x89PNG")
    edited = gif.models.build("mlp", **factories.MLP_CONFIG)
    edited.load_state_dict(safetensors.torch.load(files["weights"]))
    per_class = factories.accuracy_by_class(edited, data.x_test, data.y_test)
    assert per_class[3] <= 0.1 and min(a for c, a in enumerate(per_class) if c != 3) >= 0.8
    report = json.loads(files["report"])
    assert (
        report["provenance"]["input_digests"]["checkpoint"]
        == json.loads(job.inputs_json)["checkpoint"]["sha256"]
    )
    assert (
        report["provenance"]["torch_version"] == torch.__version__ and report["report"]["forget_class"] == 3
    )
    compute = report["provenance"]["compute"]  # what the job used (workers/memory.py)
    assert compute["device"] == "cpu" and compute["peak_rss_bytes"] > 10 * 2**20
    options = report["provenance"]["options"]  # the engine configuration the job ran with
    assert options == report["report"]["options"] and (
        options["newton_steps"],
        options["hessian_samples"],
    ) == (1, 256)
    # ``method="auto"`` as it resolved for a class removal (gif/method_choice.py)
    assert (options["method"], options["selection"]) == ("fif", "head")
    assert options["chunk_size"] == gif.EditConfig().chunk_size
    assert report["report"]["method_choice"]["requested"] == "auto"
    summary = json.loads(job.result_json)["summary"]
    assert summary["n_edited"] > 0 and summary["solver"]["method"] == "fif"
    assert json.loads(job.progress_json)["stage"] == "writing_results"


def test_scores_job(ctx, inputs):
    body = {k: v for k, v in _body(inputs, type="scores", queries=inputs["queries"], top_k=3).items()
            if k not in ("forget", "options")}  # fmt: skip
    body["options"] = {"solver": "cg", "max_iter": 5}
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    files = _result_files(ctx, _job(ctx, job_id))
    scores = safetensors.torch.load(files["scores"])["scores"]
    assert scores.shape == (4, factories.N_TRAIN)
    top = json.loads(files["top_k"])
    assert top["k"] == 3 and len(top["queries"]) == 4 and len(top["queries"][0]["proponents"]) == 3
    provenance = json.loads(files["report"])["provenance"]
    assert provenance["options"] == gif.config.defaults("scores") | {"solver": "cg", "max_iter": 5}
    assert provenance["seed"] == 0
    assert json.loads(files["report"])["diagnostics"]["normalize"] == "none"


def test_a_scores_job_at_its_defaults_is_sized_with_the_fit_it_takes(ctx, inputs, model):
    """Scores' ``auto`` takes a rank-128 low-rank fit on this MLP (gif/inverse/choice.py): the
    job's estimate holds its Lanczos basis, one p-vector per step, beside the solver's vectors."""
    body = {k: v for k, v in _body(inputs, type="scores", queries=inputs["queries"], top_k=2).items()
            if k not in ("forget", "options")}  # fmt: skip
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    report = json.loads(_result_files(ctx, _job(ctx, job_id))["report"])
    from gif.inverse.choice import SMALL_LINEAR_RANK

    p = sum(t.numel() for t in model.parameters())
    steps = min(p, 2 * SMALL_LINEAR_RANK + 20)
    estimate = report["provenance"]["compute"]["estimate"]
    assert estimate["parameters"] == (gif.memory.EDIT_VECTORS + 1 + steps) * p * 4
    assert "solver auto: lowrank" in json.dumps(report["diagnostics"])


def test_a_scores_job_names_training_samples_by_their_ids(ctx, inputs, data, tmp_path):
    ids = torch.arange(len(data.y_train)) * 3 + 100
    path = tmp_path / "train-ids.safetensors"
    gif.io.save_dataset(data.x_train, data.y_train, path, sample_ids=ids)
    train = register(ctx, path, "dataset", {"n_samples": len(data.y_train), "input_shape": [1, 8, 8]})
    body = {k: v for k, v in _body(inputs, type="scores", queries=inputs["queries"], top_k=4, train=train).items()
            if k not in ("forget", "options")}  # fmt: skip
    body["options"] = {"solver": "lowrank"}
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    files = _result_files(ctx, _job(ctx, job_id))
    for query in json.loads(files["top_k"])["queries"]:
        for entry in query["proponents"] + query["opponents"]:
            assert entry["id"] == 100 + 3 * entry["index"]
    assert torch.equal(safetensors.torch.load(files["scores"])["sample_ids"], ids)


def test_a_removal_names_samples_by_their_ids(ctx, inputs, data, tmp_path):
    """``forget: {"ids": [...]}`` removes the rows whose ``sample_ids`` those are: the same weights
    as naming the rows; an id the training set lacks fails the job, naming it."""
    n = len(data.y_train)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(0)) + 5_000  # ids in no row order
    path = tmp_path / "train-ids.safetensors"
    gif.io.save_dataset(data.x_train, data.y_train, path, sample_ids=ids)
    train = register(ctx, path, "dataset", {"n_samples": n, "input_shape": [1, 8, 8], "sample_ids": True})
    rows = [3, 40, 41, 99, 250]
    by_id = submit(ctx, _body(inputs, train=train, forget={"ids": [int(ids[r]) for r in reversed(rows)]}))
    by_row = submit(ctx, _body(inputs, train=train, forget={"indices": rows}))
    weights = []
    for job_id in (by_id, by_row):
        assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
        weights.append(safetensors.torch.load(_result_files(ctx, _job(ctx, job_id))["weights"]))
        assert json.loads(_job(ctx, job_id).result_json)["summary"]["n_edited"] == len(rows)
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    missing = submit(ctx, _body(inputs, train=train, forget={"ids": [int(ids[3]), 17, 4]}))
    assert run_job(missing, ctx.settings, ctx) is JobStatus.FAILED
    error = json.loads(_job(ctx, missing).error_json)
    assert error["code"] == "index_out_of_range" and "[17, 4]" in error["message"]
    plain = submit(ctx, _body(inputs, forget={"ids": [5_003]}))  # a training set without ids
    assert run_job(plain, ctx.settings, ctx) is JobStatus.FAILED
    assert json.loads(_job(ctx, plain).error_json)["code"] == "dataset_incompatible"


def test_a_relabel_names_samples_by_their_ids(ctx, inputs, data, tmp_path):
    """``relabel: {"ids", "labels"}``: labels[k] goes to the row holding ids[k], whatever their
    order: the same weights as naming the rows; an unknown id fails the job naming it."""
    n = len(data.y_train)
    ids = torch.randperm(n, generator=torch.Generator().manual_seed(1)) * 2 + 1
    path = tmp_path / "train-ids.safetensors"
    gif.io.save_dataset(data.x_train, data.y_train, path, sample_ids=ids)
    train = register(ctx, path, "dataset", {"n_samples": n, "input_shape": [1, 8, 8], "sample_ids": True})
    rows = [7, 30, 200]
    labels = [int((data.y_train[r] + 1) % 10) for r in rows]
    body = {k: v for k, v in _body(inputs, type="relabel", train=train).items() if k != "forget"}
    by_id = submit(
        ctx, {**body, "relabel": {"ids": [int(ids[r]) for r in reversed(rows)], "labels": labels[::-1]}}
    )
    by_row = submit(ctx, {**body, "relabel": {"indices": rows, "labels": labels}})
    weights = []
    for job_id in (by_id, by_row):
        assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
        weights.append(safetensors.torch.load(_result_files(ctx, _job(ctx, job_id))["weights"]))
    for name, tensor in weights[0].items():
        assert torch.equal(tensor, weights[1][name]), name
    missing = submit(ctx, {**body, "relabel": {"ids": [int(ids[7]), 0], "labels": [1, 2]}})  # ids are odd
    assert run_job(missing, ctx.settings, ctx) is JobStatus.FAILED
    error = json.loads(_job(ctx, missing).error_json)
    assert (
        error["code"] == "index_out_of_range"
        and "`relabel.ids`" in error["message"]
        and "[0]" in error["message"]
    )


def test_a_cosine_scores_job(ctx, inputs, data, model):
    """`normalize: cosine` returns the engine's normalised matrix, its top-k ranked on it."""
    body = {k: v for k, v in _body(inputs, type="scores", queries=inputs["queries"], top_k=2).items()
            if k not in ("forget", "options")}  # fmt: skip
    body |= {"normalize": "cosine", "options": {"solver": "lowrank"}}
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    files = _result_files(ctx, _job(ctx, job_id))
    scores = safetensors.torch.load(files["scores"])["scores"]
    queries = (data.x_test[:4], data.y_test[:4])  # what factories.write_files uploaded
    expected = gif.scores(model, (data.x_train, data.y_train), queries, solver="lowrank", normalize="cosine")
    torch.testing.assert_close(scores, expected)
    assert float(scores.abs().max()) <= 1.0 + 1e-5
    top = json.loads(files["top_k"])["queries"][0]["proponents"]
    assert [e["index"] for e in top] == torch.sort(expected[0], descending=True, stable=True).indices[
        :2
    ].tolist()
    assert json.loads(files["report"])["diagnostics"]["normalize"] == "cosine"


def _fails_with(ctx, body, code: str) -> None:
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.FAILED
    error = json.loads(_job(ctx, job_id).error_json)
    assert error["code"] == code and str(ctx.blobs.root) not in error["message"]


def test_checkpoint_that_does_not_fit_the_architecture(ctx, inputs):
    body = _body(inputs)
    body["model"]["config"]["hidden_sizes"] = [16]
    _fails_with(ctx, body, "checkpoint_incompatible")


def test_relabel_to_the_current_label_is_invalid_input(ctx, inputs, data):
    body = _body(inputs, type="relabel", relabel={"indices": [0], "labels": [int(data.y_train[0])]})
    del body["forget"]
    _fails_with(ctx, body, "invalid_input")


def test_a_stored_request_that_no_longer_parses_fails_the_job_invalid_request(ctx, inputs):
    """The worker parses the stored request into the typed spec again: one stored by a version
    whose options this one does not know ends the job with a precise error, not a crash."""
    from sqlalchemy import update

    from jobs.models import Job

    job_id = submit(ctx, _body(inputs))
    stale = _body(inputs, options={"newton_steps": 1, "momentum": 0.9})
    with ctx.db.begin() as session:
        session.execute(update(Job).where(Job.id == job_id).values(request_json=json.dumps(stale)))
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.FAILED
    error = json.loads(_job(ctx, job_id).error_json)
    assert error["code"] == "invalid_request" and "remove.options.momentum" in error["message"], error


def test_labels_outside_the_model_are_dataset_incompatible(ctx, tmp_path, inputs, data):
    path = tmp_path / "bad.safetensors"
    gif.io.save_dataset(data.x_train[:100], torch.full((100,), 12), path)
    bad = register(ctx, path, "dataset", {"n_samples": 100})
    job_id = submit(ctx, _body(inputs, train=bad, forget={"indices": [1]}))
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.FAILED
    assert json.loads(_job(ctx, job_id).error_json)["code"] == "dataset_incompatible"


def _claimed(ctx, job_id):
    with ctx.db.begin() as session:
        return store.claim(session, job_id, ctx.owner, ctx.settings.lease_seconds)


def test_cancel_observed_by_the_worker(ctx, inputs):
    job_id = submit(ctx, _body(inputs))
    lease = _claimed(ctx, job_id)
    with ctx.db.begin() as session:
        store.request_cancel(session, TENANT, job_id)
    assert execute(lease, ctx) is JobStatus.CANCELLED
    assert _job(ctx, job_id).status == "cancelled"


def test_shutdown_gives_the_job_back(ctx, inputs):
    job_id = submit(ctx, _body(inputs))
    lease = _claimed(ctx, job_id)
    ctx.shutdown.set()
    assert execute(lease, ctx) is JobStatus.QUEUED
    job = _job(ctx, job_id)
    assert job.status == "queued" and job.attempt == 0


def test_a_worker_that_lost_its_lease_writes_nothing(ctx, inputs):
    job_id = submit(ctx, _body(inputs))
    lease = _claimed(ctx, job_id)
    with ctx.db.begin() as session:  # as if the reaper had taken the job back
        store.transition(session, job_id, TENANT, JobStatus.RUNNING, JobStatus.QUEUED, token=lease.token,
                         lease_token=None)  # fmt: skip
    assert execute(lease, ctx) is None
    job = _job(ctx, job_id)
    assert job.status == "queued" and job.result_json is None


def test_results_of_a_lost_lease_never_reach_the_blob_store(ctx, inputs):
    """The commit checks (and holds) the lease before it moves any file into place, so a worker
    that wakes up after its job moved on leaves no orphan behind."""
    from workers.results import Output, Results
    from workers.runner import _commit

    job_id = submit(ctx, _body(inputs))
    lease = _claimed(ctx, job_id)
    with ctx.db.begin() as session:
        store.transition(session, job_id, TENANT, JobStatus.RUNNING, JobStatus.QUEUED, token=lease.token,
                         lease_token=None)  # fmt: skip
    output = ctx.blobs.tmp_path(".json")
    output.write_text('{"late": true}')
    blobs_before = set(ctx.blobs.committed())
    assert _commit(lease, ctx, Results([Output("report", "json", output, "report.json")], {}, {})) is None
    assert set(ctx.blobs.committed()) == blobs_before  # nothing moved into place
    assert list(ctx.blobs.temporary()) == []  # and the staged file is gone
    with ctx.db.read() as session:
        assert not store.hold_lease(session, lease)


@pytest.mark.parametrize("where", ["writing", "storing"])
def test_a_full_blob_store_fails_the_job_with_storage_error(ctx, inputs, monkeypatch, where):
    """ENOSPC while the results are written (temporary files) or moved into the store."""
    import errno

    from jobs.blobs import StagedBlob
    from workers import runner

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    if where == "writing":
        monkeypatch.setattr(runner, "write_results", full)
    else:
        monkeypatch.setattr(StagedBlob, "commit", full)
    blobs_before = set(ctx.blobs.committed())
    job_id = submit(ctx, _body(inputs))
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.FAILED
    error = json.loads(_job(ctx, job_id).error_json)
    assert error["code"] == "storage_error" and "blob store is full" in error["message"]
    assert set(ctx.blobs.committed()) == blobs_before
    from sqlalchemy import select

    from jobs.models import Artifact

    with ctx.db.read() as session:  # no result row either
        assert list(session.scalars(select(Artifact.id).where(Artifact.job_id == job_id))) == []


def test_a_worker_asked_for_a_gpu_it_lacks_fails_the_job_saying_so(ctx, inputs, monkeypatch):
    """``GIF_DEVICE=cuda:7`` on a worker without that device: the job's error names the setting
    and the reason (on a machine with 8+ GPUs it would simply run there)."""
    monkeypatch.setattr(ctx, "settings", ctx.settings.model_copy(update={"device": "cuda:7"}))
    job_id = submit(ctx, _body(inputs))
    status = run_job(job_id, ctx.settings, ctx)
    if torch.cuda.is_available() and torch.cuda.device_count() > 7:
        assert status is JobStatus.SUCCEEDED
        return
    assert status is JobStatus.FAILED
    error = json.loads(_job(ctx, job_id).error_json)
    assert error["code"] == "internal_error" and "GIF_DEVICE=cuda:7, but " in error["message"]
    if torch.version.cuda is None:
        assert "built without CUDA" in error["message"]


def test_a_kronecker_fit_made_by_one_job_serves_the_next_on_the_same_checkpoint(ctx, inputs):
    """Two deletion requests against one checkpoint: the second reads the factors the first fitted."""
    options = {"newton_steps": 2, "hessian_samples": 256, "solver": "kfac"}
    reports = []
    for cls in (3, 5):
        job_id = submit(ctx, _body(inputs, forget={"class": cls}, options=options))
        assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
        reports.append(json.loads(_result_files(ctx, _job(ctx, job_id))["report"])["report"])
    assert all(r["solver"]["solver"] == "kfac" and r["hvps"] == 0 for r in reports)
    assert not any(h["kind"] == "kfac" for h in reports[0]["cache"]["hits"])
    assert any(h["kind"] == "kfac" for h in reports[1]["cache"]["hits"])


def test_a_job_sized_over_the_memory_budget_fails_at_once_naming_what_to_change(ctx, inputs):
    """GIF_MAX_MEMORY_BYTES below the engine's estimate: memory_budget_exceeded before any
    computation (the estimate is in every job's provenance; workers/sizing.py)."""
    body = _body(inputs, options={"newton_steps": 1})  # the method left to the engine (auto)
    ok = submit(ctx, body)
    assert run_job(ok, ctx.settings, ctx) is JobStatus.SUCCEEDED
    report = json.loads(_result_files(ctx, _job(ctx, ok))["report"])
    estimate = report["provenance"]["compute"]["estimate"]
    parts = ("parameters", "activations", "data", "features")
    assert estimate["total"] == sum(estimate[part] for part in parts) > 0
    assert estimate["features"] > 0  # the head's features of every sample, which auto's removal edits
    # a removal is sized for GIF's 512 samples of the 8×8 inputs, not IF's 2,048 (gif/method_choice.py)
    assert estimate["data"] == 512 * 8 * 8 * 4
    tight = dataclasses.replace(
        ctx, settings=ctx.settings.model_copy(update={"max_memory_bytes": estimate["total"] // 2})
    )
    job_id = submit(ctx, body)
    assert run_job(job_id, tight.settings, tight) is JobStatus.FAILED
    error = json.loads(_job(ctx, job_id).error_json)
    assert error["code"] == "memory_budget_exceeded" and "GiB" in error["message"]
    assert json.loads(_job(ctx, job_id).progress_json)["stage"] == "loading_inputs"  # nothing computed


def test_a_relabel_job_may_leave_the_solver_to_the_engine(ctx, inputs, data):
    """``solver: auto``: K-FAC for this MLP of Linear layers; the report says what was chosen."""
    indices = [0, 1, 2]
    labels = [(int(data.y_train[i]) + 1) % 10 for i in indices]
    options = {"solver": "auto", "newton_steps": 1, "hessian_samples": 256}
    body = _body(inputs, type="relabel", relabel={"indices": indices, "labels": labels}, options=options)
    body.pop("forget")
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED, _job(ctx, job_id).error_json
    report = json.loads(_result_files(ctx, _job(ctx, job_id))["report"])
    assert report["report"]["solver_choice"] == {
        **report["report"]["solver_choice"],
        "requested": "auto",
        "chosen": "kfac",
    }
    # the provenance holds the options as they ran: the choice is the report's to tell
    assert report["report"]["options"]["solver"] == report["provenance"]["options"]["solver"] == "kfac"


def test_an_edit_job_changes_only_the_parameters_its_params_name(ctx, inputs, model):
    body = _body(
        inputs, params={"names": ["3.*"]}, options={"newton_steps": 1, "hessian_samples": 256, "ratio": 1.0}
    )
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED, _job(ctx, job_id).error_json
    weights = safetensors.torch.load(_result_files(ctx, _job(ctx, job_id))["weights"])
    before = model.state_dict()
    assert torch.equal(weights["1.weight"], before["1.weight"]) and torch.equal(
        weights["1.bias"], before["1.bias"]
    )
    assert not torch.equal(weights["3.weight"], before["3.weight"])
    nothing = submit(ctx, _body(inputs, params={"names": ["classifier.*"]}))
    assert run_job(nothing, ctx.settings, ctx) is JobStatus.FAILED
    error = json.loads(_job(ctx, nothing).error_json)
    assert error["code"] == "invalid_input" and "no trainable parameter matches" in error["message"]


def test_a_second_job_like_the_first_is_estimated_from_it(ctx, inputs):
    """Another class removed from the same checkpoint and data with the same options: its estimate
    is what the first job took (jobs/estimates.py) and the work its report counted."""
    from jobs.views import job_view

    first = submit(ctx, _body(inputs))
    assert job_view(_job(ctx, first))["estimate"] is None
    assert run_job(first, ctx.settings, ctx) is JobStatus.SUCCEEDED
    done = _job(ctx, first)
    work = json.loads(_result_files(ctx, done)["report"])["report"]["work"]
    second = job_view(_job(ctx, submit(ctx, _body(inputs, forget={"class": 5}))))
    seconds = (done.finished_at - done.started_at).total_seconds()
    assert second["estimate"] == {"seconds": round(seconds, 3), "based_on": 1, "work": work}


def test_a_job_may_solve_on_the_gauss_newton_matrix(ctx, inputs, data):
    """``curvature: gauss_newton`` reaches the engine: the job runs with it (provenance) and its CG
    edit differs from the same job's on the Hessian."""
    indices = list(range(20))
    labels = [(int(data.y_train[i]) + 1) % 10 for i in indices]
    weights = {}
    for curvature in ("hessian", "gauss_newton"):
        options = {
            "method": "if",
            "solver": "cg",
            "curvature": curvature,
            "newton_steps": 1,
            "hessian_samples": 256,
        }
        body = _body(inputs, type="relabel", relabel={"indices": indices, "labels": labels}, options=options)
        body.pop("forget")
        job_id = submit(ctx, body)
        assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED, _job(ctx, job_id).error_json
        files = _result_files(ctx, _job(ctx, job_id))
        report = json.loads(files["report"])
        assert (
            report["provenance"]["options"]["curvature"]
            == report["report"]["options"]["curvature"]
            == curvature
        )
        weights[curvature] = safetensors.torch.load(files["weights"])
    assert any(not torch.equal(weights["hessian"][k], weights["gauss_newton"][k]) for k in weights["hessian"])


def test_a_job_may_set_the_hvp_subset_and_the_stop_objective(ctx, inputs, data):
    """``hvp_samples`` and ``stop_objective`` reach the engine: the report says over how many
    samples the HVPs ran, and no Newton step but the last reached the stop; out of range, refused
    at parsing (the API's 422)."""
    indices = list(range(20))
    labels = [(int(data.y_train[i]) + 1) % 10 for i in indices]
    options = {"method": "if", "solver": "cg", "newton_steps": 3, "hessian_samples": 256, "hvp_samples": 64,
               "stop_objective": 0.47}  # fmt: skip
    body = _body(inputs, type="relabel", relabel={"indices": indices, "labels": labels}, options=options)
    body.pop("forget")
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED, _job(ctx, job_id).error_json
    report = json.loads(_result_files(ctx, _job(ctx, job_id))["report"])
    edit = report["report"]
    assert report["provenance"]["options"]["hvp_samples"] == edit["options"]["hvp_samples"] == 64
    assert (edit["hessian_samples"], edit["hvp_samples"]) == (256, 64)
    objectives = [step["step"]["objective"] for step in edit["newton_steps"]]
    # the first step lands below 0.47 here, the second above: the third is not taken
    assert objectives[-1] >= 0.47 > max(objectives[:-1]) and len(objectives) == 2, objectives
    for name, bad in (("stop_objective", 1.5), ("hvp_samples", 0)):
        wrong = _body(
            inputs, type="relabel", relabel={"indices": indices, "labels": labels}, options={name: bad}
        )
        wrong.pop("forget")
        with pytest.raises(pydantic.ValidationError, match=name):
            specs.parse(wrong)


def test_a_job_editing_the_last_layers_of_a_sequential_runs_on_their_features(ctx, tmp_path, data):
    """FIF on an MLP's last two Linear layers: the job's edit runs on the input of the first of
    them (gif/tail_edit.py) and changes those layers alone, as the whole network's edit would."""
    config = {**factories.MLP_CONFIG, "hidden_sizes": [32, 16]}  # Flatten, Linear, ReLU, Linear, ReLU, Linear
    torch.manual_seed(0)
    model = gif.models.build("mlp", **config).eval()
    ids = register_digits(ctx, tmp_path / "files", data, model)
    options = {"method": "fif", "ratio": 1.0, "newton_steps": 1, "hessian_samples": 256}
    model_spec = {"arch": "mlp", "config": config, "checkpoint": ids["checkpoint"]}
    body = _body(ids, options=options, model=model_spec, params={"names": ["3.*", "5.*"]})
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED, _job(ctx, job_id).error_json
    files = _result_files(ctx, _job(ctx, job_id))
    edit = json.loads(files["report"])["report"]
    assert edit["head_features"]["modules"] == ["3", "4", "5"] and edit["head_features"]["features"] == 32
    weights = safetensors.torch.load(files["weights"])
    changed = {name for name, value in model.state_dict().items() if not torch.equal(weights[name], value)}
    assert changed == {"3.weight", "3.bias", "5.weight", "5.bias"}
