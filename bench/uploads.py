"""Upload and download throughput through a real server: a multipart form, a raw body, and an
upload session (parts sent in parallel), with blobs in a folder and in an S3-compatible bucket
(moto's server process, in memory on this machine).

The file is a safetensors checkpoint of one float32 tensor (``--mib`` MiB), so each upload is
hashed, inspected and stored as a real one is. Between runs the artifact is deleted, so every
upload stores its bytes again (no dedup hit).

    python bench/uploads.py [--mib 256] [--repeats 3] [--stores folder,bucket]
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gif_client import Client  # noqa: E402
from tests.stack import KEY, Stack  # noqa: E402

PART_MIB = 32


def _checkpoint(folder: Path, mib: int) -> Path:
    import safetensors.torch
    import torch

    path = folder / f"checkpoint-{mib}mib.safetensors"
    safetensors.torch.save_file({"weight": torch.randn(mib * 1024 * 1024 // 4)}, str(path))
    return path


def _form(client: Client, path: Path) -> dict:
    with open(path, "rb") as f:
        response = client._http.client.post(
            "/v1/artifacts", files={"file": (path.name, f)}, data={"kind": "checkpoint"}
        )
    response.raise_for_status()
    return response.json()


def _raw(client: Client, path: Path) -> dict:
    with open(path, "rb") as f:
        response = client._http.client.post(
            "/v1/artifacts",
            content=f,
            headers={"Content-Type": "application/octet-stream", "X-Artifact-Kind": "checkpoint"},
        )
    response.raise_for_status()
    return response.json()


def _session(client: Client, path: Path) -> dict:
    return client.upload_resumable(path, "checkpoint", parallel=4)


def _download(client: Client, artifact: dict, out: Path) -> None:
    client.download(artifact["id"], out)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=256, help="file size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stores", type=_common.str_list, default=["folder", "bucket"])
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        path = _checkpoint(Path(tmp), args.mib)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        for store in args.stores:
            env = {"GIF_MAX_UPLOAD_BYTES": str(4 * 1024**3), "GIF_UPLOAD_PART_BYTES": str(PART_MIB * 1024**2)}
            with (
                Stack("embedded", Path(tmp) / store, bucket=store == "bucket", extra_env=env) as stack,
                Client(f"http://127.0.0.1:{stack.port}", api_key=KEY, timeout=600) as client,
            ):
                for name, upload in (("multipart form", _form), ("raw body", _raw),
                                         (f"session ({PART_MIB} MiB parts, 4 parallel)", _session)):  # fmt: skip
                    seconds = []
                    for _ in range(args.repeats):
                        started = time.perf_counter()
                        artifact = upload(client, path)
                        seconds.append(time.perf_counter() - started)
                        assert artifact["sha256"] == digest, artifact
                        client._http.request("DELETE", f"/v1/artifacts/{artifact['id']}")
                    rows.append((store, f"upload: {name}", *_rate(args.mib, seconds)))
                artifact = _raw(client, path)
                seconds = []
                for k in range(args.repeats):
                    started = time.perf_counter()
                    _download(client, artifact, Path(tmp) / f"down-{store}-{k}")
                    seconds.append(time.perf_counter() - started)
                rows.append((store, "download", *_rate(args.mib, seconds)))
    print(f"\n{_common.machine_description()}; a {args.mib} MiB checkpoint, median of {args.repeats}\n")
    print(_common.markdown_table(["blob store", "operation", "seconds", "MiB/s"], rows))


def _rate(mib: int, seconds: list[float]) -> tuple[str, str]:
    median = statistics.median(seconds)
    return f"{median:.2f}", f"{mib / median:.0f}"


if __name__ == "__main__":
    main()
