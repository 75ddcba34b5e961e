"""Memory of the API and of a worker over many sequential jobs (embedded or distributed mode).

Starts the service through ``tests/stack.py`` (real processes; distributed mode adds a private
redis-server, a PostgreSQL database and one Celery worker), uploads the digits fixture, then runs
``--jobs`` removal jobs one after another (a different forget class each time, so the cache does
not short-cut them), reading the resident set size (VmRSS) of the API process and of the process
that ran each job. Prints RSS after the first job, after 10, and at the end, and the growth from
job 10 to the last (the first jobs load torch, the model code and allocator pools).

    python bench/soak.py [--jobs 50] [--mode embedded|distributed]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import factories  # noqa: E402
from tests.stack import Stack  # noqa: E402


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=50)
    ap.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        digits = factories.digits()
        files = factories.write_files(home / "files", digits, factories.train_mlp(digits))
        with Stack(args.mode, home / "stack", extra_env={"GIF_CACHE": "false"}) as stack:
            rows = soak(stack, files, args.jobs)
    print(f"\n{args.mode} mode, {args.jobs} sequential removal jobs (digits MLP), RSS in MiB\n")
    print("| process | after job 1 | after job 10 | after last | growth 10→last |")
    print("|---|---|---|---|---|")
    for name in ("api", "worker"):
        first, tenth, last = rows[0][name], rows[min(9, len(rows) - 1)][name], rows[-1][name]
        print(f"| {name} | {first:.0f} | {tenth:.0f} | {last:.0f} | {last - tenth:+.1f} |")
    marks = sorted({0, *range(9, len(rows), 10), len(rows) - 1})
    print("\nworker RSS by job: " + ", ".join(f"{k + 1}: {rows[k]['worker']:.0f}" for k in marks))
    seconds = [row["seconds"] for row in rows]
    print(f"\njob wall time: median {sorted(seconds)[len(seconds) // 2]:.2f} s, max {max(seconds):.2f} s")


def soak(stack: Stack, files: dict, jobs: int) -> list[dict]:
    client = stack.client
    ids = {name: artifact["id"] for name, artifact in stack.upload(files).items()}
    rows = []
    for k in range(jobs):
        body = {"type": "remove", "model": {"arch": "mlp", "config": dict(factories.MLP_CONFIG), "checkpoint": ids["checkpoint"]},
                "train": ids["train"], "forget": {"indices": [k, k + 100, k + 200]},
                "options": {"newton_steps": 2, "hessian_samples": 256}}  # fmt: skip
        started = time.monotonic()
        job_id = client.post("/v1/jobs", json=body).json()["id"]
        while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            time.sleep(0.1)
        assert job["status"] == "succeeded", job
        events = client.get(f"/v1/jobs/{job_id}/events", params={"limit": 100}).json()["data"]
        worker_pid = int(
            [e for e in events if e["type"] == "job.running"][-1]["data"]["worker"].split(":")[1]
        )
        rows.append({"api": rss_mib(stack.api.proc.pid), "worker": rss_mib(worker_pid),
                     "seconds": time.monotonic() - started})  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
