"""Quick start with the SDK: remove class 3 from the bundled digits model through the service.

Start the service first (``make serve``), then::

    GIF_API_KEY=<key printed by serve> .venv/bin/python examples/quickstart/quickstart.py

Uploads the bundled checkpoint and training set, submits a ``remove`` job for class 3, waits
(printing progress), downloads the updated weights and prints per-class test accuracy before
and after, and what the job took next to retraining the model from scratch without the class
(the bundle's own recipe, examples/quickstart/make_bundle.py, timed here: run it on the machine
that serves, as ``make serve`` does, for a like-for-like ratio).
"""

from __future__ import annotations

import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import gif
from gif_client import Client

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from digits import MLP, train  # noqa: E402

ARCH = {"arch": "mlp", "config": {"input_shape": [1, 8, 8], "hidden_sizes": [64], "num_classes": 10}}
CLASS = 3


@dataclass
class Session:
    """Per-class test accuracy before and after the edit, and the job's wall time (started to
    finished, as the service recorded it)."""

    before: list[float]
    after: list[float]
    job_seconds: float


def run(client: Client, cls: int = CLASS) -> Session:
    """The whole session: upload, submit, wait, download, evaluate."""
    checkpoint = client.upload(HERE / "model.safetensors", "checkpoint")
    train_set = client.upload(HERE / "train.safetensors", "dataset")
    job = client.submit(
        {
            "type": "remove",
            "model": {**ARCH, "checkpoint": checkpoint["id"]},
            "train": train_set["id"],
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
    return Session(
        gif.metrics.per_class_accuracy(before_model, x, y, 10),
        gif.metrics.per_class_accuracy(after_model, x, y, 10),
        _seconds(job["started_at"], job["finished_at"]),
    )


def retraining_seconds(cls: int = CLASS) -> float:
    """Seconds to train the bundled model again without class ``cls``: the bundle's recipe."""
    x, y = gif.io.load_dataset(HERE / "train.safetensors")
    keep = y != cls
    start = time.perf_counter()
    train(MLP, x[keep], y[keep], seed=0, epochs=40)
    return time.perf_counter() - start


def _seconds(started: str, finished: str) -> float:
    return (datetime.fromisoformat(finished) - datetime.fromisoformat(started)).total_seconds()


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


def print_cost(job_seconds: float, retraining: float) -> None:
    print(f"the job: {job_seconds:.2f} s; retraining from scratch without the class: {retraining:.2f} s "
          f"({job_seconds / retraining:.2f}× retraining)")  # fmt: skip


def main() -> None:
    with Client() as client:  # GIF_BASE_URL (default http://127.0.0.1:8000) and GIF_API_KEY
        session = run(client)
    print_table(session.before, session.after)
    print_cost(session.job_seconds, retraining_seconds())


if __name__ == "__main__":
    main()
