"""Exported programs end to end through a real server (``gif-service serve``, embedded workers):
a custom module exported with ``torch.export`` and a dynamic batch dimension is uploaded with the
SDK's ``upload_model``, a ``remove`` job edits it, and both results come back: safetensors weights
that load into the original module, and a ``.pt2`` that ``torch.export.load`` reads and that
computes the edited outputs. Refusals: a fixed batch size, a pickled constant, a garbage zip, and
an artifact of the wrong kind."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import pytest
import safetensors.torch
import torch

import gif_client
from tests import programs as P
from tests.stack import KEY, Stack, wait_finished

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with Stack("embedded", tmp_path_factory.mktemp("programs-e2e")) as stack:
        yield stack


@pytest.fixture(scope="module")
def sdk(server):
    with gif_client.Client(f"http://127.0.0.1:{server.port}", KEY) as client:
        yield client


@pytest.fixture(scope="module")
def net(digits) -> P.DigitsNet:
    return P.train_digits_net(digits)


@pytest.fixture(scope="module")
def pt2(tmp_path_factory, net, digits) -> Path:
    return P.export(net, digits.x_train[:4], tmp_path_factory.mktemp("pt2") / "digits-net.pt2")


@pytest.fixture(scope="module")
def train(server, files) -> str:
    return server.upload(files, ("train",))["train"]["id"]


def _download(client, entry: dict) -> bytes:
    content = client.get(entry["download_url"]).content
    assert hashlib.sha256(content).hexdigest() == entry["sha256"]
    return content


def _accuracy(model, x, y) -> list[float]:
    with torch.no_grad():
        pred = model(x).argmax(1)
    return [float((pred[y == c] == c).float().mean()) for c in range(10)]


def test_remove_a_class_from_an_exported_program(server, sdk, pt2, net, train, digits, tmp_path):
    model = sdk.upload_model(pt2)
    assert model["format"] == "torch.export"
    meta = sdk.artifact(model["program"])["metadata"]
    assert meta["input_shape"] == [1, 8, 8] and meta["num_classes"] == 10
    assert set(meta["parameters"]) == {n for n, _ in net.named_parameters()}
    body = {"type": "remove", "model": model, "train": train, "forget": {"class": 3},
            "options": {"newton_steps": 2, "hessian_samples": 256}}  # fmt: skip
    job = wait_finished(server.client, server.client.post("/v1/jobs", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    results = {entry["kind"]: entry for entry in job["result"]["artifacts"]}
    assert set(results) >= {"weights", "program", "report"}
    assert job["result"]["provenance"]["input_digests"]["program"] == sdk.artifact(model["program"])["sha256"]

    edited = P.DigitsNet().eval()
    edited.load_state_dict(safetensors.torch.load(_download(server.client, results["weights"])))
    after = _accuracy(edited, digits.x_test, digits.y_test)
    before = _accuracy(net, digits.x_test, digits.y_test)
    assert after[3] <= 0.2 < before[3], (before, after)
    assert min(a for c, a in enumerate(after) if c != 3) >= 0.75, after

    (tmp_path / "edited.pt2").write_bytes(_download(server.client, results["program"]))
    program = torch.export.load(str(tmp_path / "edited.pt2")).module()
    for batch in (1, 13):
        x = digits.x_test[:batch]
        torch.testing.assert_close(program(x), edited(x), rtol=0, atol=1e-5)


def test_the_cli_submits_a_body_whose_model_is_a_pt2_path(server, pt2, train, files, tmp_path):
    from typer.testing import CliRunner

    from service.cli import app

    queries = server.upload(files, ("queries",))["queries"]["id"]
    body = tmp_path / "body.json"
    spec = {"type": "scores", "model": str(pt2), "train": train, "queries": queries, "top_k": 2}
    body.write_text(json.dumps(spec))
    env = {"GIF_BASE_URL": f"http://127.0.0.1:{server.port}", "GIF_API_KEY": KEY}
    result = CliRunner().invoke(app, ["submit", str(body), "--wait", "--timeout", "240"], env=env)
    assert result.exit_code == 0, result.output
    assert '"status": "succeeded"' in result.stdout


def _upload(client, content: bytes, kind: str, name: str = "model.pt2"):
    return client.post("/v1/artifacts", files={"file": (name, content)}, data={"kind": kind})


def test_a_program_without_a_dynamic_batch_is_refused_at_upload(server, net, digits, tmp_path):
    path = P.export(net, digits.x_train[:4], tmp_path / "static.pt2", dynamic=False)
    response = _upload(server.client, path.read_bytes(), "program")
    assert response.status_code == 422 and response.json()["code"] == "invalid-artifact"
    assert "fixed batch size (4)" in response.json()["detail"]


def test_a_pickled_constant_is_refused_and_never_runs(server, pt2, tmp_path):
    canary = tmp_path / "CANARY"
    path = P.pickled_weight(pt2, tmp_path / "evil.pt2", canary)
    response = _upload(server.client, path.read_bytes(), "program")
    assert response.status_code == 422 and response.json()["code"] == "checkpoint-unsafe"
    assert "use_pickle" in response.json()["detail"]
    assert not canary.exists()


def test_a_garbage_zip_is_refused(server):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model/hello.txt", "not a program")
    response = _upload(server.client, buffer.getvalue(), "program")
    assert response.status_code == 422 and response.json()["code"] == "invalid-artifact"


def test_artifacts_of_the_wrong_kind_are_refused(server, pt2, train, files):
    as_checkpoint = _upload(server.client, pt2.read_bytes(), "checkpoint")
    assert as_checkpoint.status_code == 422, as_checkpoint.text
    checkpoint = server.upload(files, ("checkpoint",))["checkpoint"]["id"]
    body = {"type": "remove", "model": {"format": "torch.export", "program": checkpoint},
            "train": train, "forget": {"class": 3}}  # fmt: skip
    response = server.client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert [(e["loc"], e["type"]) for e in response.json()["errors"]] == [
        (["body", "model", "program"], "artifact_wrong_kind")
    ]
    mixed = {**body, "model": {"format": "torch.export", "program": checkpoint, "arch": "mlp"}}
    problem = server.client.post("/v1/jobs", json=mixed).json()
    assert [e["loc"] for e in problem["errors"]] == [["body", "model", "arch"]]
