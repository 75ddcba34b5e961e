"""Hugging Face jobs in the worker, in-process: a ViT image classifier and a BERT text classifier
built from their configs, their ``save_pretrained`` safetensors loaded strictly, datasets of
named tensors; the job's weights load back into a fresh model and give the outputs the job
reported. Failures with precise codes: a checkpoint of another shape, an unsupported model type,
tensor names ``forward`` does not take, token ids beyond the vocabulary. The same checks the
inspector makes at submit (``workers.huggingface.inspect_request``) run here without the sandbox."""

from __future__ import annotations

import json
import time

import pytest
import safetensors.torch
import torch
import transformers

import gif
from jobs import artifacts, specs, store
from jobs.errors import ValidationFailed
from jobs.huggingface import inspection_request
from jobs.states import JobStatus
from jobs.submit import submit_job
from workers import huggingface
from workers.runner import run_job

from . import hf_models as H
from .conftest import TENANT, register, submit


@pytest.fixture(scope="module")
def vit():
    x, y = H.image_task(60)
    return H.train(H.vit_config(), x, y, steps=40), (x, y)


@pytest.fixture(scope="module")
def bert():
    x, y = H.token_task(60)
    return H.train(H.bert_config(), x, y, steps=40), (x, y)


def _checkpoint(ctx, tmp_path, model) -> str:
    folder = H.save(model, tmp_path / "saved")
    state = safetensors.torch.load_file(folder / "model.safetensors")
    return register(ctx, folder / "model.safetensors", "checkpoint", gif.io.describe_checkpoint(state))


def _dataset(ctx, tmp_path, x, y, name="train.safetensors") -> str:
    gif.io.save_dataset(x, y, tmp_path / name)
    inputs, labels = gif.io.load_dataset(tmp_path / name)
    meta = {**gif.io.describe_dataset(inputs, labels), "label_max": int(labels.max())}
    return register(ctx, tmp_path / name, "dataset", meta)


def _body(config: dict, checkpoint: str, train: str, **changes) -> dict:
    body = {
        "type": "remove", "model": {"format": "huggingface", "config": config, "checkpoint": checkpoint},
        "train": train, "forget": {"class": 2}, "options": {"newton_steps": 2, "hessian_samples": 40},
    }  # fmt: skip
    return {**body, **changes}


def _run(ctx, body) -> tuple[JobStatus, object]:
    job_id = submit(ctx, body)
    status = run_job(job_id, ctx.settings, ctx)
    with ctx.db.read() as session:
        return status, store.require_job(session, TENANT, job_id)


def _weights(ctx, job) -> dict[str, torch.Tensor]:
    entry = next(e for e in json.loads(job.result_json)["artifacts"] if e["kind"] == "weights")
    with ctx.db.read() as session:
        art = artifacts.get_artifact(session, TENANT, entry["id"])
    return safetensors.torch.load(ctx.blobs.path(art.sha256).read_bytes())


def test_a_vit_removal_returns_weights_that_load_into_a_fresh_model(ctx, tmp_path, vit):
    model, (x, y) = vit
    config = json.loads(model.config.to_json_string())
    body = _body(config, _checkpoint(ctx, tmp_path, model), _dataset(ctx, tmp_path, x, y))
    # IF over every parameter: this ViT fits its 60 images to a loss of ~1e-6, where 5% of the
    # parameters (GIF) cannot move class 2 within the step search's bounds (docs/models.md)
    body["options"] = {**body["options"], "method": "if"}
    status, job = _run(ctx, body)
    assert status is JobStatus.SUCCEEDED, job.error_json
    fresh = transformers.AutoModelForImageClassification.from_config(H.vit_config()).eval()
    fresh.load_state_dict(_weights(ctx, job), strict=True)
    reported = json.loads(job.result_json)["summary"]["per_class_accuracy"]
    assert reported["after"] == pytest.approx(H.accuracy_per_class(fresh, x, y), abs=1e-12)
    assert reported["before"] == pytest.approx(H.accuracy_per_class(model, x, y), abs=1e-12)
    assert reported["after"][2] <= 0.2 < reported["before"][2]


def test_a_bert_checkpoint_of_another_shape_fails_checkpoint_incompatible(ctx, tmp_path, bert):
    model, (x, y) = bert
    other = H.train(H.bert_config(hidden_size=8, intermediate_size=8), x, y, steps=1)
    config = json.loads(model.config.to_json_string())
    status, job = _run(ctx, _body(config, _checkpoint(ctx, tmp_path, other), _dataset(ctx, tmp_path, x, y)))
    assert status is JobStatus.FAILED
    error = json.loads(job.error_json)
    assert error["code"] == "checkpoint_incompatible" and "bert.embeddings" in error["message"]


def test_an_unknown_model_type_fails_unsupported_model(ctx, tmp_path, bert):
    model, (x, y) = bert
    config = {**json.loads(model.config.to_json_string()), "model_type": "bert-from-the-future"}
    status, job = _run(ctx, _body(config, _checkpoint(ctx, tmp_path, model), _dataset(ctx, tmp_path, x, y)))
    assert status is JobStatus.FAILED
    error = json.loads(job.error_json)
    assert error["code"] == "unsupported_model" and "bert-from-the-future" in error["message"]


def test_tensor_names_forward_does_not_take_fail_the_job(ctx, tmp_path, bert):
    model, (x, y) = bert
    config = json.loads(model.config.to_json_string())
    train = _dataset(ctx, tmp_path, {**x, "pixel_values": torch.zeros(len(y), 2)}, y)
    status, job = _run(ctx, _body(config, _checkpoint(ctx, tmp_path, model), train))
    assert status is JobStatus.FAILED
    error = json.loads(job.error_json)
    assert error["code"] == "dataset_incompatible" and "'pixel_values'" in error["message"]


def test_token_ids_beyond_the_vocabulary_are_refused_at_submit_and_by_the_worker(ctx, tmp_path, bert):
    model, (x, y) = bert
    config = json.loads(model.config.to_json_string())
    checkpoint = _checkpoint(ctx, tmp_path, model)
    ids = x["input_ids"].clone()
    ids[5, 3] = H.VOCAB + 7
    train = _dataset(ctx, tmp_path, {**x, "input_ids": ids}, y)
    with pytest.raises(ValidationFailed) as refused:
        submit_job(
            ctx.db, ctx.settings, TENANT, specs.parse(_body(config, checkpoint, train)), fingerprint="f"
        )
    assert [(e["loc"], e["type"]) for e in refused.value.errors] == [
        (["body", "train"], "token_out_of_range")
    ]
    assert f"up to {H.VOCAB + 7}" in refused.value.errors[0]["msg"]
    gif.io.save_dataset({**x, "input_ids": ids}, y, tmp_path / "unrecorded.safetensors")
    unrecorded = register(
        ctx, tmp_path / "unrecorded.safetensors", "dataset"
    )  # no metadata to check at submit
    status, job = _run(ctx, _body(config, checkpoint, unrecorded))
    assert status is JobStatus.FAILED
    assert json.loads(job.error_json)["code"] == "dataset_incompatible"
    assert "vocab_size" in json.loads(job.error_json)["message"]


def test_the_inspectors_checks_name_each_problem(bert):
    model, _ = bert
    config = json.loads(model.config.to_json_string())
    tensors = gif.io.describe_checkpoint(model.state_dict())
    assert (
        huggingface.inspect_request(
            inspection_request(config, tensors, {"train": {"inputs": {"input_ids": {}}}})
        )
        == []
    )
    wrong = {**tensors, "tensors": [t for t in tensors["tensors"] if t["name"] != "classifier.bias"]}
    found = huggingface.inspect_request(
        inspection_request(config, wrong, {"train": {"inputs": {"input_ids": {}, "pixel_values": {}}}})
    )
    assert [(p["loc"], p["type"]) for p in found] == [
        (["model", "checkpoint"], "checkpoint_incompatible"), (["train"], "unexpected_inputs"),
    ]  # fmt: skip
    assert "missing: classifier.bias" in found[0]["msg"] and "'pixel_values'" in found[1]["msg"]
    for change, words in (
        ({"model_type": "nope"}, "model_type 'nope'"),
        ({"architectures": ["BertForMaskedLM"]}, "BertForMaskedLM is not a sequence or image classifier"),
    ):
        (only,) = huggingface.inspect_request(inspection_request({**config, **change}, tensors, {}))
        assert only["type"] == "unsupported_model" and words in only["msg"]


def test_a_config_with_a_million_layers_is_refused_without_building_them(bert):
    """Layer counts far beyond what the checkpoint holds stop the (meta-device) build after a
    module budget, in seconds: a hostile config costs the inspector no more than a real one."""
    model, _ = bert
    config = json.loads(model.config.to_json_string())
    tensors = gif.io.describe_checkpoint(model.state_dict())
    start = time.monotonic()
    (only,) = huggingface.inspect_request(
        inspection_request({**config, "num_hidden_layers": 10**6}, tensors, {})
    )
    assert time.monotonic() - start < 60
    assert (only["loc"], only["type"]) == (["model", "config"], "checkpoint_incompatible")
    limit = huggingface.MODULE_ALLOWANCE + huggingface.MODULES_PER_TENSOR * len(tensors["tensors"])
    assert f"more than {limit:,} modules" in only["msg"] and "layer counts" in only["msg"]
    twice = {**config, "num_hidden_layers": 2 * config["num_hidden_layers"]}  # a plausible size still builds
    assert [p["type"] for p in huggingface.inspect_request(inspection_request(twice, tensors, {}))] == [
        "checkpoint_incompatible"
    ]  # the ordinary shape check (missing tensors), not the budget
    assert "missing" in huggingface.inspect_request(inspection_request(twice, tensors, {}))[0]["msg"]


def test_whatever_transformers_raises_while_building_is_unsupported_model():
    """A ConvNeXt (no attention) builds with its eager code; one whose stage lists disagree with
    its stage count makes transformers raise IndexError: unsupported_model, not an internal error."""
    good = transformers.ConvNextConfig(num_channels=1, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
    assert type(huggingface.build(good.to_dict())).__name__ == "ConvNextForImageClassification"
    config = transformers.ConvNextConfig(num_channels=1, hidden_sizes=[8, 16], depths=[1, 1]).to_dict()
    with pytest.raises(gif.errors.GifError, match="transformers cannot build") as bad:
        huggingface.build(config)
    assert bad.value.code == "unsupported_model"
    broken = {**json.loads(H.bert_config().to_json_string()), "num_attention_heads": 5}  # 16 % 5 != 0
    with pytest.raises(
        gif.errors.GifError, match=r"transformers cannot build this config|not a multiple"
    ) as info:
        huggingface.build(broken)
    assert info.value.code == "unsupported_model"


def test_a_bert_scores_job_takes_named_queries(ctx, tmp_path, bert):
    model, (x, y) = bert
    config = json.loads(model.config.to_json_string())
    queries = {k: v[:4] for k, v in x.items()}
    body = {
        "type": "scores", "model": {"format": "huggingface", "config": config, "checkpoint": _checkpoint(ctx, tmp_path, model)},
        "train": _dataset(ctx, tmp_path, x, y), "queries": _dataset(ctx, tmp_path, queries, y[:4], "queries.safetensors"),
        "top_k": 3,
    }  # fmt: skip
    status, job = _run(ctx, body)
    assert status is JobStatus.SUCCEEDED, job.error_json
    kinds = {e["kind"]: e for e in json.loads(job.result_json)["artifacts"]}
    with ctx.db.read() as session:
        art = artifacts.get_artifact(session, TENANT, kinds["scores"]["id"])
    scores = safetensors.torch.load(ctx.blobs.path(art.sha256).read_bytes())["scores"]
    assert scores.shape == (4, len(y)) and bool(torch.isfinite(scores).all())
