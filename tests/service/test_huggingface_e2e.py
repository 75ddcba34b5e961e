"""Hugging Face models end to end through a real server (``gif-service serve``, embedded workers):
a tiny BERT built from a local config and trained on a generated token task is saved with
``save_pretrained``, uploaded with the SDK's ``upload_model`` (config + safetensors), its data
with ``upload_dataset`` (named tensors); a ``remove`` job edits it; the weights that come back
load with ``load_state_dict`` into a fresh model from the same config (and with
``from_pretrained`` beside the config), and give exactly the per-class accuracy the job reported.
Refusals at submit (422): remote code, a model type transformers does not ship, a head that is
not a classifier, a checkpoint of another shape together with tensor names ``forward`` does not
take, and token ids beyond the vocabulary."""

from __future__ import annotations

import hashlib
import json
import shutil
import time

import pytest
import safetensors.torch
import torch
import transformers

import gif_client
from tests.stack import KEY, Stack, wait_finished
from tests.workers import hf_models as H

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Stack("embedded", tmp_path_factory.mktemp("hf-e2e")) as stack:
        yield stack


@pytest.fixture(scope="module")
def sdk(server):
    with gif_client.Client(f"http://127.0.0.1:{server.port}", KEY) as client:
        yield client


@pytest.fixture(scope="module")
def data():
    return H.token_task(90, seed=4)


@pytest.fixture(scope="module")
def bert(data):
    return H.train(H.bert_config(), *data)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, bert):
    return H.save(bert, tmp_path_factory.mktemp("bert"))


@pytest.fixture(scope="module")
def uploaded(sdk, saved, data):
    x, y = data
    return sdk.upload_model(saved), sdk.upload_dataset(x, y)["id"]


def _download(client, entry: dict) -> bytes:
    content = client.get(entry["download_url"]).content
    assert hashlib.sha256(content).hexdigest() == entry["sha256"]
    return content


def test_remove_a_class_from_a_bert_and_load_the_weights_back(
    server, sdk, uploaded, saved, bert, data, tmp_path
):
    model, train = uploaded
    assert model["format"] == "huggingface" and model["config"]["model_type"] == "bert"
    assert sdk.artifact(train)["metadata"]["inputs"]["input_ids"]["max"] < H.VOCAB
    body = {"type": "remove", "model": model, "train": train, "forget": {"class": 2},
            "options": {"newton_steps": 2, "hessian_samples": 40, "ratio": 0.3}}  # fmt: skip
    job = wait_finished(server.client, sdk.submit(body)["id"])
    assert job["status"] == "succeeded", job["error"]
    assert job["result"]["provenance"]["model"] == {
        "format": "huggingface", "model_type": "bert", "architecture": "BertForSequenceClassification",
        "num_labels": H.CLASSES,
    }  # fmt: skip
    weights = _download(server.client, sdk.result_artifact(job, "weights"))

    fresh = transformers.AutoModelForSequenceClassification.from_config(H.bert_config()).eval()
    fresh.load_state_dict(safetensors.torch.load(weights), strict=True)
    x, y = data
    reported = job["result"]["summary"]["per_class_accuracy"]
    assert reported["data"] == "train"
    assert reported["after"] == pytest.approx(H.accuracy_per_class(fresh, x, y), abs=1e-12)
    assert reported["before"] == pytest.approx(H.accuracy_per_class(bert, x, y), abs=1e-12)
    assert reported["after"][2] < reported["before"][2]

    shutil.copy(saved / "config.json", tmp_path / "config.json")
    (tmp_path / "model.safetensors").write_bytes(weights)
    again = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(**x).logits, fresh(**x).logits, rtol=0, atol=0)


@pytest.mark.parametrize("method", ["if", "fif"])
def test_params_names_restrict_the_edit_to_the_classifier_head(server, sdk, uploaded, bert, method):
    # the whole head with a plain Newton step: every matching parameter moves (this test BERT is so
    # confident that GIF's 5% of a 3-row head would move below float32 resolution). FIF on the head
    # alone runs on the classifier's features (gif/tail_edit.py); IF needs the whole network.
    model, train = uploaded
    body = {"type": "remove", "model": model, "train": train, "forget": {"class": 2},
            "params": {"names": ["classifier.*"]},
            "options": {"method": method, "ratio": 1.0, "step": "newton", "newton_steps": 1,
                        "hessian_samples": 40}}  # fmt: skip
    job = wait_finished(server.client, sdk.submit(body)["id"])
    assert job["status"] == "succeeded", job["error"]
    weights = safetensors.torch.load(_download(server.client, sdk.result_artifact(job, "weights")))
    before = bert.state_dict()
    changed = sorted(name for name, w in weights.items() if not torch.equal(w, before[name]))
    assert changed == ["classifier.bias", "classifier.weight"], changed
    report = json.loads(_download(server.client, sdk.result_artifact(job, "report")))["report"]
    assert ("head_features" in report) is (method == "fif")


def test_the_cli_submits_a_save_pretrained_folder(server, saved, uploaded, tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    _, train = uploaded
    body = tmp_path / "body.json"
    body.write_text(json.dumps({"type": "relabel", "model": "unused", "train": train,
                                "relabel": {"indices": [0], "labels": [(0 + 1) % H.CLASSES]}}))  # fmt: skip
    env = {"GIF_BASE_URL": f"http://127.0.0.1:{server.port}", "GIF_API_KEY": KEY}
    result = CliRunner().invoke(app, ["submit", str(body), "--model", str(saved)], env=env)
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["type"] == "relabel" and job["status"] in ("queued", "running", "succeeded")


def _refused(server, model: dict, train: str) -> list[tuple[list, str, str]]:
    body = {"type": "remove", "model": model, "train": train, "forget": {"class": 1}}
    response = server.client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    return [(e["loc"], e["type"], e["msg"]) for e in response.json()["errors"]]


def test_remote_code_is_refused_before_anything_is_built(server, uploaded):
    model, train = uploaded
    config = {**model["config"], "auto_map": {"AutoModelForSequenceClassification": "evil.Model"}}
    [(loc, code, msg)] = _refused(server, {**model, "config": config}, train)
    assert (loc, code) == (["body", "model", "config"], "remote_code") and "auto_map" in msg


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"model_type": "bert-from-the-future"}, "'bert-from-the-future' is not one that transformers"),
        ({"architectures": ["BertForMaskedLM"]}, "BertForMaskedLM is not a sequence or image classifier"),
    ],
)
def test_models_transformers_cannot_build_as_classifiers_are_refused(server, uploaded, change, words):
    model, train = uploaded
    [(loc, code, msg)] = _refused(server, {**model, "config": {**model["config"], **change}}, train)
    assert (loc, code) == (["body", "model", "config"], "unsupported_model") and words in msg


def test_a_config_with_a_million_layers_is_refused_quickly_through_the_sandbox(server, uploaded):
    model, train = uploaded
    config = {**model["config"], "num_hidden_layers": 10**6}
    start = time.monotonic()
    [(loc, code, msg)] = _refused(server, {**model, "config": config}, train)
    assert (loc, code) == (["body", "model", "config"], "checkpoint_incompatible") and "layer counts" in msg
    assert time.monotonic() - start < 60
    assert server.client.get("/v1/jobs").status_code == 200  # the API is still answering


def test_a_checkpoint_of_another_shape_and_tensors_forward_does_not_take_are_refused(
    server, sdk, uploaded, data, tmp_path
):
    model, _ = uploaded
    x, y = data
    other = H.save(H.train(H.bert_config(hidden_size=8, intermediate_size=8), x, y, steps=1), tmp_path / "o")
    checkpoint = sdk.upload(other / "model.safetensors", "checkpoint")["id"]
    train = sdk.upload_dataset({**x, "pixel_values": torch.zeros(len(y), 2)}, y)["id"]
    found = _refused(server, {**model, "checkpoint": checkpoint}, train)
    assert [(loc, code) for loc, code, _ in found] == [
        (["body", "model", "checkpoint"], "checkpoint_incompatible"), (["body", "train"], "unexpected_inputs"),
    ]  # fmt: skip
    assert "other shapes: bert.embeddings" in found[0][2] and "'pixel_values'" in found[1][2]


def test_token_ids_beyond_the_vocabulary_are_refused(server, sdk, uploaded, data):
    model, _ = uploaded
    x, y = data
    ids = x["input_ids"].clone()
    ids[3, 1] = H.VOCAB
    train = sdk.upload_dataset({**x, "input_ids": ids}, y)["id"]
    [(loc, code, msg)] = _refused(server, model, train)
    assert (loc, code) == (["body", "train"], "token_out_of_range") and f"vocab_size is {H.VOCAB}" in msg
