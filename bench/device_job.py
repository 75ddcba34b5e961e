"""One class removal through a real embedded server whose workers compute on ``--device``: prints
the job's outcome, time, where it ran (provenance ``compute``: device, GPU name, peak memory) and
its metrics, to compare with a CPU run, and the job's time next to retraining the checkpoint's
MLP without the class by its own recipe (``tests/factories.py``, ``train_mlp``; in this process,
on the CPU: like for like with ``--device cpu``).

    python bench/device_job.py --device cuda      # on a GPU machine
    python bench/device_job.py --device cpu       # the same job on the CPU

What the first GPU lease ran (docs/benchmarks.md, "On a GPU"), besides this script:
``GIF_TEST_DEVICE=cuda python -m pytest tests/engine``, ``python bench/hvp_cost.py --device cuda``
and ``GIF_DEVICE=cuda python -m pytest tests/service/test_e2e.py -k embedded``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests import factories  # noqa: E402
from tests.stack import Stack  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--device", default="cuda", help="GIF_DEVICE of the workers: cuda, cuda:N, cpu or auto"
    )
    parser.add_argument("--solver", default="lowrank")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        digits = factories.digits()
        files = factories.write_files(Path(tmp) / "files", digits, factories.train_mlp(digits))
        with Stack("embedded", Path(tmp) / "stack", extra_env={"GIF_DEVICE": args.device}) as stack:
            inputs = stack.upload(files)
            model = {
                "arch": "mlp",
                "config": dict(factories.MLP_CONFIG),
                "checkpoint": inputs["checkpoint"]["id"],
            }
            body = {"type": "remove", "model": model, "train": inputs["train"]["id"], "forget": {"class": 3},
                    "options": {"solver": args.solver, "rank": 16, "newton_steps": 2}}  # fmt: skip
            job_id = stack.client.post("/v1/jobs", json=body).json()["id"]
            started = time.monotonic()
            while (job := stack.client.get(f"/v1/jobs/{job_id}").json())["status"] not in {
                "succeeded",
                "failed",
            }:
                time.sleep(0.2)
            seconds = time.monotonic() - started
            print(f"status {job['status']} in {seconds:.1f} s", job.get("error") or "")
            keep = digits.y_train != 3
            start = time.perf_counter()
            factories.train_mlp(
                dataclasses.replace(digits, x_train=digits.x_train[keep], y_train=digits.y_train[keep])
            )
            retraining = time.perf_counter() - start
            print(
                f"retraining without class 3 (CPU): {retraining:.2f} s; the job {seconds / retraining:.2f}× retraining"
            )
            if job["status"] == "succeeded":
                summary = job["result"]["summary"]
                print("compute", json.dumps(job["result"]["provenance"].get("compute")))
                print(
                    "solver",
                    json.dumps({k: summary["solver"].get(k) for k in ("method", "hvps", "converged")}),
                )
                print("metrics", json.dumps(summary.get("metrics", {})))
    sys.exit(0 if job["status"] == "succeeded" else 1)


if __name__ == "__main__":
    main()
