"""The ``self_influence`` job (mislabel triage), in-process: every training sample's score as a
safetensors artifact, the top-k most suspicious samples highest first, a second ranking with a
trusted validation set."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

import gif
from jobs import artifacts, specs, store
from jobs.states import JobStatus
from jobs.submit import submit_job
from tests import factories
from workers.runner import run_job

from .conftest import DIGITS_SHAPE as SHAPE
from .conftest import TENANT, register, register_digits, submit


@pytest.fixture(scope="module")
def model(data):
    return factories.train_mlp(data, epochs=10)


@pytest.fixture
def inputs(ctx, tmp_path, data, model):
    return register_digits(ctx, tmp_path / "files", data, model, "test")


def _run(ctx, body) -> tuple[dict, dict[str, bytes]]:
    job_id = submit(ctx, body)
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.SUCCEEDED
    with ctx.db.read() as session:
        result = json.loads(store.require_job(session, TENANT, job_id).result_json)
        files = {
            e["kind"]: ctx.blobs.path(artifacts.get_artifact(session, TENANT, e["id"]).sha256).read_bytes()
            for e in result["artifacts"]
        }
    return result, files


def _body(inputs, **changes) -> dict:
    model = {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": inputs["checkpoint"]}
    return {"type": "self_influence", "model": model, "train": inputs["train"], "top_k": 15, **changes}


def test_self_influence_job_returns_every_score_and_the_top_k(ctx, inputs, data, model):
    result, files = _run(ctx, _body(inputs, validation=inputs["test"]))
    assert set(files) == {"scores", "top_k", "report"}
    tensors = safetensors.torch.load(files["scores"])
    scores = tensors["self_influence"]
    assert scores.shape == (len(data.y_train),)
    expected = gif.self_influence(model, (data.x_train, data.y_train))
    torch.testing.assert_close(scores, expected)
    top = result["summary"]["self_influence"]
    assert [e["index"] for e in top] == torch.sort(expected, descending=True, stable=True).indices[
        :15
    ].tolist()
    assert result["summary"]["k"] == 15 and result["summary"]["exact"] is False
    assert result["summary"]["measure"] == "head"  # auto, for this classifier ending in a Linear layer
    assert json.loads(files["report"])["measure"] == "head"
    flagged = int((expected > 0).sum())  # a head refitted without them gives these another class
    assert 0 < flagged < len(expected) // 2
    assert result["summary"]["flagged"] == flagged == json.loads(files["report"])["flagged"]
    harm = tensors["validation_harm"]
    assert [e["index"] for e in result["summary"]["validation_harm"]] == torch.sort(
        harm, descending=True, stable=True
    ).indices[:15].tolist()
    assert json.loads(files["top_k"])["self_influence"] == top


def test_the_loss_measure_is_the_classic_self_influence(ctx, inputs, data, model):
    result, files = _run(ctx, _body(inputs, measure="loss"))
    expected = gif.self_influence(model, (data.x_train, data.y_train), measure="loss")
    torch.testing.assert_close(safetensors.torch.load(files["scores"])["self_influence"], expected)
    assert result["summary"]["measure"] == "loss"
    margin = gif.self_influence(model, (data.x_train, data.y_train), measure="margin")
    assert not torch.allclose(expected, margin)


def test_a_curvature_option_measures_the_margin_and_head_can_be_named(ctx, inputs, data, model):
    """`auto` refits the head only when the job asks for no curvature; `head` named explicitly
    is the engine's leave-one-out head whatever the options."""
    train = (data.x_train, data.y_train)
    result, files = _run(ctx, _body(inputs, options={"rank": 32}))
    assert result["summary"]["measure"] == "margin" and "flagged" not in result["summary"]
    expected = gif.self_influence(model, train, rank=32, measure="margin")
    torch.testing.assert_close(safetensors.torch.load(files["scores"])["self_influence"], expected)
    result, files = _run(ctx, _body(inputs, measure="head", options={"rank": 32}))
    assert result["summary"]["measure"] == "head"
    expected = gif.self_influence(model, train, measure="head")
    torch.testing.assert_close(safetensors.torch.load(files["scores"])["self_influence"], expected)


def test_an_exact_solver_solves_per_sample(ctx, inputs, data, tmp_path):
    path = tmp_path / "small.safetensors"
    gif.io.save_dataset(data.x_train[:24], data.y_train[:24], path)
    small = register(ctx, path, "dataset", {"n_samples": 24, "input_shape": SHAPE})
    result, files = _run(ctx, _body(inputs, train=small, top_k=3, options={"solver": "cg", "max_iter": 3}))
    assert result["summary"]["exact"] is True and result["summary"]["solver"] == "cg"
    assert "validation_harm" not in safetensors.torch.load(files["scores"])


def test_rankings_name_samples_by_the_datasets_own_ids(ctx, inputs, data, tmp_path):
    """A training set with ``sample_ids``: every top-k entry carries the id of its row, and the
    scores file carries the ids in its column order."""
    n = len(data.y_train)
    ids = 10_000_000_000 + 7 * torch.arange(n).flip(0)  # user keys: large, not the row order
    path = tmp_path / "named.safetensors"
    gif.io.save_dataset(data.x_train, data.y_train, path, sample_ids=ids)
    train = register(ctx, path, "dataset", {"n_samples": n, "input_shape": SHAPE, "sample_ids": True})
    result, files = _run(ctx, _body(inputs, train=train, validation=inputs["test"], top_k=5))
    for ranking in ("self_influence", "validation_harm"):
        entries = result["summary"][ranking]
        assert len(entries) == 5 and all(e["id"] == int(ids[e["index"]]) for e in entries)
    assert torch.equal(safetensors.torch.load(files["scores"])["sample_ids"], ids)
    plain, plain_files = _run(ctx, _body(inputs, top_k=5))
    assert "id" not in plain["summary"]["self_influence"][0]
    assert "sample_ids" not in safetensors.torch.load(plain_files["scores"])


def test_a_training_set_with_repeated_ids_fails_the_job_clearly(ctx, inputs, data, tmp_path):
    import numpy as np

    path = tmp_path / "repeated.npz"
    ids = np.arange(len(data.y_train))
    ids[5] = ids[2]
    np.savez(path, inputs=data.x_train.numpy(), labels=data.y_train.numpy(), sample_ids=ids)
    train = register(ctx, path, "dataset", {"n_samples": len(data.y_train), "input_shape": SHAPE})
    job_id = submit_job(
        ctx.db, ctx.settings, TENANT, specs.parse(_body(inputs, train=train)), fingerprint="f"
    ).job.id
    assert run_job(job_id, ctx.settings, ctx) is JobStatus.FAILED
    with ctx.db.read() as session:
        error = json.loads(store.require_job(session, TENANT, job_id).error_json)
    assert error["code"] == "dataset_incompatible" and "2 appears 2 times (rows [2, 5])" in error["message"]


def test_spec_bounds():
    body = {"type": "self_influence", "model": {"arch": "mlp", "checkpoint": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBC"},
            "train": "art_01JD3Q7W8M6Z5K2R9T0V4X1YBD"}  # fmt: skip
    assert specs.parse(body).top_k == 10
    with pytest.raises(ValueError):
        specs.parse({**body, "top_k": 0})
    with pytest.raises(ValueError):
        specs.parse({**body, "queries": body["train"]})
    assert specs.parse(body).measure == "auto"
    with pytest.raises(ValueError):
        specs.parse({**body, "measure": "log_odds"})
