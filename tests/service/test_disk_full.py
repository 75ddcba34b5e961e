"""A blob store that really fills up: ``$GIF_HOME/blobs`` on a 1 MiB tmpfs under a real server.

An upload that does not fit is 507 ``insufficient-storage`` and leaves nothing behind; a job
whose results do not fit fails ``storage_error``; once space is freed, the same job runs. (The
job store lives outside the tmpfs, as a deployment would keep its database apart.)
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from tests import factories
from tests.stack import Stack, wait_finished

pytestmark = pytest.mark.slow

SIZE = 1024 * 1024


@pytest.fixture
def small_blob_store(tmp_path):
    blobs = tmp_path / "data" / "blobs"
    blobs.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE}", "tmpfs", str(blobs)],
                             capture_output=True, text=True, check=False)  # fmt: skip
    assert mounted.returncode == 0, f"mounting a tmpfs needs root: {mounted.stderr}"
    yield blobs
    subprocess.run(["umount", "-l", str(blobs)], capture_output=True, check=False)


def _fill(filler: Path, blobs: Path, leave: int) -> None:
    """Grow or shrink ``filler`` until the tmpfs has about ``leave`` bytes free."""
    free = int(subprocess.run(["df", "-B1", "--output=avail", str(blobs)], capture_output=True, text=True,
                              check=True).stdout.split()[-1])  # fmt: skip
    filler.write_bytes(b"\0" * max(0, filler.stat().st_size + free - leave))


def _store_files(blobs: Path) -> list[Path]:
    return sorted(p for p in (blobs / "sha256").rglob("*") if p.is_file())


def test_uploads_and_jobs_that_do_not_fit(tmp_path, small_blob_store, files):
    with Stack("embedded", tmp_path) as stack:
        client = stack.client
        inputs = stack.upload(files)  # ~0.3 MiB
        stored = _store_files(small_blob_store)

        big = tmp_path / "big.npz"
        x = np.random.default_rng(0).standard_normal((2000, 64)).astype(np.float32)  # ~0.5 MiB compressed
        np.savez_compressed(big, inputs=x, labels=np.zeros(2000, dtype=np.int64))
        filler = small_blob_store / "filler"
        filler.write_bytes(b"\0" * (SIZE - 700 * 1024))  # not a blob: what something else used
        with open(big, "rb") as f:
            refused = client.post("/v1/artifacts", files={"file": ("big.npz", f)}, data={"kind": "dataset"})
        assert refused.status_code == 507, refused.text
        problem = refused.json()
        assert problem["code"] == "insufficient-storage" and refused.headers["retry-after"] == "300"
        assert list((small_blob_store / "tmp").iterdir()) == [] and _store_files(small_blob_store) == stored

        # a job whose results cannot be written
        _fill(filler, small_blob_store, leave=4096)
        body = {"type": "remove", "train": inputs["train"]["id"], "forget": {"class": 2},
                "model": {"arch": "mlp", "config": dict(factories.MLP_CONFIG),
                          "checkpoint": inputs["checkpoint"]["id"]},
                "options": {"newton_steps": 1, "hessian_samples": 128}}  # fmt: skip
        failed = wait_finished(client, client.post("/v1/jobs", json=body).json()["id"])
        assert failed["status"] == "failed" and failed["error"]["code"] == "storage_error", failed
        assert _store_files(small_blob_store) == stored and list((small_blob_store / "tmp").iterdir()) == []

        # a .pt checkpoint whose upload fits but whose conversion to safetensors does not
        import safetensors.torch
        import torch

        pt = tmp_path / "model.pt"
        torch.save(safetensors.torch.load_file(files["checkpoint"]), pt)
        pages = -(-pt.stat().st_size // 4096)
        _fill(filler, small_blob_store, leave=(pages + 1) * 4096)
        with open(pt, "rb") as f:
            unconverted = client.post(
                "/v1/artifacts", files={"file": ("model.pt", f)}, data={"kind": "checkpoint"}
            )
        assert unconverted.status_code == 507, unconverted.text  # not 422: the file was fine
        assert _store_files(small_blob_store) == stored and list((small_blob_store / "tmp").iterdir()) == []

        # space freed: the same request runs, and the server never went down
        filler.unlink()
        done = wait_finished(client, client.post("/v1/jobs", json=body).json()["id"])
        assert done["status"] == "succeeded", done["error"]
        assert stack.api.alive() and client.get("/readyz").status_code == 200
