"""Quick start with the SDK: remove class 3 from the bundled digits model through the service.

Start the service first (``make serve``), then::

    GIF_API_KEY=<key printed by serve> .venv/bin/python examples/quickstart/quickstart.py

Uploads the bundled checkpoint and training set, submits a ``remove`` job for class 3, waits
(printing progress), downloads the updated weights and prints per-class test accuracy before
and after.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import gif
from gif_client import Client

HERE = Path(__file__).resolve().parent
ARCH = {"arch": "mlp", "config": {"input_shape": [1, 8, 8], "hidden_sizes": [64], "num_classes": 10}}
CLASS = 3


def run(client: Client, cls: int = CLASS) -> tuple[list[float], list[float]]:
    """The whole session; returns per-class test accuracy before and after the edit."""
    checkpoint = client.upload(HERE / "model.safetensors", "checkpoint")
    train = client.upload(HERE / "train.safetensors", "dataset")
    job = client.submit(
        {
            "type": "remove",
            "model": {**ARCH, "checkpoint": checkpoint["id"]},
            "train": train["id"],
            "forget": {"class": cls},
        }
    )
    print(f"submitted {job['id']}", file=sys.stderr)
    job = client.wait(
        job["id"],
        on_progress=lambda j: print(
            f"  {j['status']:10s} {(j.get('progress') or {}).get('stage') or ''}", file=sys.stderr
        ),
    )
    weights = client.result_artifact(job, "weights")
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download(weights["id"], Path(tmp) / "updated.safetensors")
        after_model = _load(path)
    before_model = _load(HERE / "model.safetensors")
    x, y = gif.io.load_dataset(HERE / "test.safetensors")
    return (
        gif.metrics.per_class_accuracy(before_model, x, y, 10),
        gif.metrics.per_class_accuracy(after_model, x, y, 10),
    )


def _load(path: Path):
    model = gif.models.build(ARCH["arch"], **ARCH["config"])
    gif.io.load_checkpoint(path, model)
    return model.eval()


def print_table(before: list[float], after: list[float], cls: int = CLASS) -> None:
    print("| class | accuracy before | accuracy after |")
    print("|---|---|---|")
    for c, (b, a) in enumerate(zip(before, after, strict=True)):
        mark = " (removed)" if c == cls else ""
        print(f"| {c}{mark} | {100 * b:.1f} | {100 * a:.1f} |")


def main() -> None:
    with Client() as client:  # GIF_BASE_URL (default http://127.0.0.1:8000) and GIF_API_KEY
        print_table(*run(client))


if __name__ == "__main__":
    main()
