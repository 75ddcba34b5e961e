"""Edit jobs with a forgetting audit (docs/audit.md), in-process: ``holdout`` and ``reference``
checked at submit, loaded by the worker, the audit in the report and summary, the loss
histograms as a PNG."""

from __future__ import annotations

import json

import pytest

from jobs import artifacts, store
from jobs.errors import ValidationFailed
from jobs.states import JobStatus
from tests import factories
from workers.runner import run_job

from .conftest import TENANT, register, register_digits, submit


@pytest.fixture
def inputs(ctx, tmp_path, data, model):
    ids = register_digits(ctx, tmp_path / "files", data, model, "test")
    odd = factories.write_files(tmp_path / "files", data, model)["queries"]
    return {**ids, "odd": register(ctx, odd, "dataset", {"n_samples": 4, "input_shape": [1, 4, 4]})}


def _body(inputs, **changes):
    body = {
        "type": "remove", "model": {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": inputs["checkpoint"]},
        "train": inputs["train"], "forget": {"indices": list(range(0, 1200, 12))},
        "options": {"newton_steps": 1, "hessian_samples": 256},
    }  # fmt: skip
    body.update(changes)
    return body


def _entries(ctx, job_id) -> tuple[dict, list[tuple[dict, bytes]]]:
    with ctx.db.read() as session:
        job = store.require_job(session, TENANT, job_id)
    result = json.loads(job.result_json)
    files = []
    for entry in result["artifacts"]:
        with ctx.db.read() as session:
            art = artifacts.get_artifact(session, TENANT, entry["id"])
        files.append(({**entry, "filename": art.filename}, ctx.blobs.path(art.sha256).read_bytes()))
    return result, files


def test_remove_job_with_holdout_and_reference_returns_the_audit_and_its_plot(ctx, inputs):
    body = _body(inputs, holdout=inputs["test"], reference=inputs["checkpoint"])
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    result, files = _entries(ctx, job_id)
    audit = result["summary"]["audit"]
    assert set(audit["before"]) == {"mia_auc", "mia_efficacy", "forget_accuracy", "retained_accuracy",
                                    "holdout_accuracy"}  # fmt: skip
    assert audit["samples"] == {"forget": 100, "retained": 1100, "holdout": 597}
    assert audit["gap"]["before"]["avg_gap"] == 0.0  # the reference is the unedited model itself
    assert audit["not_computed"] == {}
    plots = {entry["filename"]: blob for entry, blob in files if entry["kind"] == "plot"}
    assert any(name.endswith("audit-losses.png") for name in plots)
    assert all(blob.startswith(b"\x89PNG") for blob in plots.values())
    report = json.loads(next(blob for entry, blob in files if entry["kind"] == "report"))
    assert sum(report["report"]["audit"]["histograms"]["after"]["forget"]) == 100
    assert result["provenance"]["input_digests"]["holdout"]


def test_without_holdout_the_summary_says_why_and_no_audit_plot(ctx, inputs):
    job_id = submit(ctx, _body(inputs))
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    result, files = _entries(ctx, job_id)
    assert "no holdout" in result["summary"]["audit"]["not_computed"]["mia_auc"]
    assert not any(entry["filename"].endswith("audit-losses.png") for entry, _ in files)


@pytest.mark.parametrize(
    ("change", "where", "kind"),
    [
        ({"holdout": "checkpoint"}, "holdout", "artifact_wrong_kind"),
        ({"reference": "train"}, "reference", "artifact_wrong_kind"),
        ({"holdout": "odd"}, "holdout", "shape_mismatch"),
    ],
)
def test_audit_inputs_are_checked_at_submit(ctx, inputs, change, where, kind):
    body = _body(inputs, **{key: inputs[value] for key, value in change.items()})
    with pytest.raises(ValidationFailed) as caught:
        submit(ctx, body)
    assert [(e["loc"], e["type"]) for e in caught.value.errors] == [(["body", where], kind)]
