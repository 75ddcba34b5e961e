"""Uploads (streamed, inspected in a subprocess), metadata, downloads, dedup, deletion."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from service.main import create_app
from tests import factories

from .conftest import MAX_UPLOAD, client_for, make_settings, remove_body, upload


def _stored_files(home: Path) -> list[Path]:
    return [p for p in (home / "blobs").rglob("*") if p.is_file()]


def test_checkpoint_upload_records_tensors(uploaded):
    art = uploaded["checkpoint"]
    assert art["kind"] == "checkpoint" and art["format"] == "safetensors"
    assert art["metadata"]["n_tensors"] == 4
    names = {t["name"]: t["shape"] for t in art["metadata"]["tensors"]}
    assert names["1.weight"] == [32, 64]


def test_dataset_upload_records_shape_and_labels(uploaded):
    meta = uploaded["train"]["metadata"]
    assert meta["n_samples"] == factories.N_TRAIN
    assert meta["input_shape"] == [1, 8, 8]
    assert meta["num_classes_seen"] == 10 and meta["label_min"] == 0 and meta["label_max"] == 9


def test_a_dataset_names_its_samples_and_repeated_ids_are_refused_at_upload(client_a, tmp_path, digits):
    x, y = digits.x_test[:20].numpy(), digits.y_test[:20].numpy()
    ids = np.arange(500, 520)
    np.savez(tmp_path / "ids.npz", inputs=x, labels=y, sample_ids=ids)
    response = upload(client_a, tmp_path / "ids.npz", "dataset")
    assert response.status_code == 201, response.text
    assert response.json()["metadata"]["sample_ids"] is True
    ids[7] = ids[3]
    np.savez(tmp_path / "repeated.npz", inputs=x, labels=y, sample_ids=ids)
    refused = upload(client_a, tmp_path / "repeated.npz", "dataset")
    assert refused.status_code == 422 and refused.headers["content-type"].startswith(
        "application/problem+json"
    )
    assert refused.json()["code"] == "invalid-artifact"
    assert "503 appears 2 times (rows [3, 7])" in refused.json()["detail"]


def test_dedup_per_tenant(client_a, client_b, files, uploaded):
    again = upload(client_a, files["checkpoint"], "checkpoint")
    assert again.status_code == 200 and again.json()["id"] == uploaded["checkpoint"]["id"]
    other = upload(client_b, files["checkpoint"], "checkpoint")
    assert other.status_code == 201 and other.json()["id"] != uploaded["checkpoint"]["id"]
    assert client_b.get(f"/v1/artifacts/{uploaded['checkpoint']['id']}").status_code == 404


def test_download_matches_and_has_digest_headers(client_a, files, uploaded):
    art = uploaded["train"]
    response = client_a.get(f"/v1/artifacts/{art['id']}/content")
    assert response.status_code == 200
    assert (
        hashlib.sha256(response.content).hexdigest()
        == art["sha256"]
        == hashlib.sha256(files["train"].read_bytes()).hexdigest()
    )
    assert response.headers["etag"] == f'"sha256:{art["sha256"]}"'
    assert response.headers["content-disposition"].startswith("attachment; filename*=UTF-8''")
    cached = client_a.get(
        f"/v1/artifacts/{art['id']}/content", headers={"If-None-Match": response.headers["etag"]}
    )
    assert cached.status_code == 304
    part = client_a.get(f"/v1/artifacts/{art['id']}/content", headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and part.content == response.content[:10]


def test_client_filename_is_metadata_only(client_a, tmp_path, digits):
    path = tmp_path / "d.npz"
    np.savez(path, inputs=digits.x_test[:50].numpy(), labels=digits.y_test[:50].numpy())
    response = upload(client_a, path, "dataset", filename="../../etc/\x01pass wd.npz")
    assert response.status_code == 201, response.text
    art = response.json()
    assert art["format"] == "npz" and art["metadata"]["n_samples"] == 50
    assert "/" not in art["filename"] and "\x01" not in art["filename"]
    disposition = client_a.get(f"/v1/artifacts/{art['id']}/content").headers["content-disposition"]
    assert "%2F" not in disposition and ".." not in disposition


def test_pt_state_dict_is_converted_to_safetensors(client_a, tmp_path, trained):
    path = tmp_path / "model.pt"
    torch.save(trained.state_dict(), path)
    response = upload(client_a, path, "checkpoint")
    assert response.status_code == 201, response.text
    art = response.json()
    assert art["format"] == "safetensors"
    assert art["metadata"]["converted_from"] == {
        "format": "pt",
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
    }
    content = client_a.get(f"/v1/artifacts/{art['id']}/content").content
    assert hashlib.sha256(content).hexdigest() == art["sha256"]


def test_over_limit_upload_is_413_and_stores_nothing(tmp_path):
    home = tmp_path / "home"
    app = create_app(make_settings(home))
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(MAX_UPLOAD + 200 * 1024))
    with client_for(app, "tenantA") as client:
        response = upload(client, big, "checkpoint")
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "payload-too-large"
        # just over the file limit but within the multipart allowance: the blob writer stops it
        small_over = tmp_path / "over.bin"
        small_over.write_bytes(os.urandom(MAX_UPLOAD + 10))
        response = upload(client, small_over, "checkpoint")
        assert response.status_code == 413 and response.json()["code"] == "payload-too-large"
    assert _stored_files(home) == []


def test_canary_pickle_is_refused_and_never_runs(tmp_path):
    home, canary = tmp_path / "home", tmp_path / "CANARY"
    app = create_app(make_settings(home))
    evil = factories.canary_pickle(tmp_path / "evil.pt", canary)
    with client_for(app, "tenantA") as client:
        response = upload(client, evil, "checkpoint")
    assert response.status_code == 422, response.text
    assert response.json()["code"] == "checkpoint-unsafe"
    assert not canary.exists()
    assert _stored_files(home) == []


def test_truncated_safetensors_is_invalid(tmp_path, files):
    home = tmp_path / "home"
    app = create_app(make_settings(home))
    broken = factories.truncated(files["checkpoint"], tmp_path / "broken.safetensors")
    with client_for(app, "tenantA") as client:
        response = upload(client, broken, "checkpoint")
        assert response.status_code == 422
        body = response.json()
        assert body["code"] == "invalid-artifact" and "truncated" in body["detail"]
        assert str(home) not in body["detail"]  # no server paths in problems
        not_a_dataset = upload(client, files["checkpoint"], "dataset")
        assert not_a_dataset.status_code == 422 and not_a_dataset.json()["code"] == "invalid-artifact"
    assert _stored_files(home) == []


def test_bad_forms(client_a, files):
    assert upload(client_a, files["queries"], "weights").json()["errors"][0]["loc"] == ["body", "kind"]
    no_file = client_a.post("/v1/artifacts", files={"other": ("x", b"1")}, data={"kind": "dataset"})
    assert no_file.status_code == 422 and no_file.json()["code"] == "validation-error"
    text = client_a.post("/v1/artifacts", content=b"abc", headers={"content-type": "text/plain"})
    assert text.status_code == 415 and text.json()["code"] == "unsupported-media-type"
    no_kind = client_a.post(
        "/v1/artifacts", content=b"abc", headers={"content-type": "application/octet-stream"}
    )
    assert no_kind.status_code == 422 and no_kind.json()["errors"][0]["loc"] == ["body", "kind"]


def test_delete_in_use_is_409_then_204(client_a, files, uploaded):
    fresh = upload(client_a, files["test"], "dataset").json()
    job = client_a.post("/v1/jobs", json=remove_body(uploaded, validation=fresh["id"])).json()
    busy = client_a.delete(f"/v1/artifacts/{fresh['id']}")
    assert busy.status_code == 409 and busy.json()["code"] == "artifact-in-use"
    assert client_a.post(f"/v1/jobs/{job['id']}/cancel").json()["status"] == "cancelled"
    assert client_a.delete(f"/v1/artifacts/{fresh['id']}").status_code == 204
    assert client_a.get(f"/v1/artifacts/{fresh['id']}").status_code == 404
    assert client_a.delete(f"/v1/artifacts/{fresh['id']}").status_code == 404


def test_npz_declaring_a_huge_array_is_refused(client_a, tmp_path):
    import zipfile

    from numpy.lib import format as npy

    path = tmp_path / "bomb.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, dtype in (("inputs", np.float32), ("labels", np.int64)):
            with archive.open(f"{name}.npy", "w", force_zip64=True) as f:
                header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": (4_000_000_000,)}
                npy.write_array_header_2_0(f, header)
                f.write(b"\0" * 4096)
    response = upload(client_a, path, "dataset")
    assert response.status_code == 422 and response.json()["code"] == "invalid-artifact"


def test_an_expired_upload_is_gone_then_purged_and_can_be_uploaded_again(tmp_path, files):
    import time
    from datetime import UTC, datetime

    from jobs import retention

    home = tmp_path / "home"
    # kept 20 seconds: longer than an upload's inspection takes on a loaded 2-core machine (the
    # expiry counts from the upload's start), then the test waits until the stated expiry
    app = create_app(make_settings(home, upload_ttl_seconds=20))
    services = app.state.services
    with client_for(app, "tenantA") as client:
        first = upload(client, files["queries"], "dataset").json()
        assert first["expires_at"] is not None
        assert client.get(f"/v1/artifacts/{first['id']}").status_code == 200
        expires = datetime.fromisoformat(first["expires_at"].replace("Z", "+00:00"))
        time.sleep(max(0.0, (expires - datetime.now(UTC)).total_seconds()) + 0.2)

        for url in (f"/v1/artifacts/{first['id']}", f"/v1/artifacts/{first['id']}/content"):
            gone = client.get(url)
            assert (
                gone.status_code == 410
                and gone.json()["code"] == "gone"
                and "expired" in gone.json()["detail"]
            )
        job = client.post("/v1/jobs", json={"type": "scores", "model": {"arch": "mlp", "checkpoint": first["id"]},
                                            "train": first["id"], "queries": first["id"]})  # fmt: skip
        assert job.status_code == 422 and "artifact_expired" in {e["type"] for e in job.json()["errors"]}

        assert retention.purge_expired(services.db, services.blobs).blobs == 1
        assert _stored_files(home) == []
        again = upload(client, files["queries"], "dataset")
        assert (
            again.status_code == 201 and again.json()["id"] != first["id"]
        )  # not a dedup hit on the expired one
        assert (
            client.get(f"/v1/artifacts/{again.json()['id']}/content").content == files["queries"].read_bytes()
        )
        assert (
            client.delete(f"/v1/artifacts/{first['id']}").status_code == 204
        )  # an expired row can be deleted
    services.inspector.close()
