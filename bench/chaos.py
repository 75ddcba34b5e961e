"""Long chaos runs: a batch of jobs while processes are killed at random (tests/chaos.py has the
faults and the invariants; tests/service/test_chaos.py runs a short version in CI).

    python bench/chaos.py [--mode embedded|distributed|both] [--jobs 40] [--faults 20] [--seed 7]

Prints one row per mode: jobs, faults injected by kind, outcomes, the most attempts any job
needed, artifacts and blobs verified, problems found (must be 0) and wall time.
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests import factories  # noqa: E402
from tests.chaos import run_chaos  # noqa: E402
from tests.stack import Stack  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("embedded", "distributed", "both"), default="both")
    ap.add_argument("--jobs", type=int, default=40)
    ap.add_argument("--faults", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument(
        "--bucket", action="store_true", help="blobs in an S3-compatible bucket (moto), a folder per process"
    )
    ap.add_argument(
        "--partition",
        action="store_true",
        help="distributed: a worker behind a network link the faults cut (root, iproute2)",
    )
    args = ap.parse_args()
    modes = ["embedded", "distributed"] if args.mode == "both" else [args.mode]
    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        digits = factories.digits()
        files = factories.write_files(Path(tmp) / "files", digits, factories.train_mlp(digits))
        for mode in modes:
            partitioned = int(args.partition and mode == "distributed")
            with Stack(mode, Path(tmp) / mode, workers=2, own_postgres=mode == "distributed", bucket=args.bucket,
                       partitioned_workers=partitioned, extra_env={"GIF_DATABASE_TIMEOUT_SECONDS": "4"}) as stack:  # fmt: skip
                inputs = stack.upload(files)
                reports.append(run_chaos(stack, inputs, jobs=args.jobs, seed=args.seed, max_faults=args.faults,
                                         interval=(2.0, 6.0), timeout=3600))  # fmt: skip
    print(
        "\n| mode | jobs | faults | outcomes | max attempts | artifacts / blobs verified | orphans swept "
        "(blobs left) | problems | seconds |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in reports:
        faults = ", ".join(f"{k} {v}" for k, v in sorted(collections.Counter(r.faults).items()))
        outcomes = ", ".join(f"{k} {v}" for k, v in sorted(r.statuses.items()))
        if r.error_codes:
            outcomes += " (" + ", ".join(f"{k} {v}" for k, v in r.error_codes.items()) + ")"
        print(f"| {r.mode} | {r.jobs} | {faults} | {outcomes} | {r.attempts_max} | "
              f"{r.artifacts_checked} / {r.blobs_checked} | {r.orphans_swept} ({r.blobs_after_sweep}) | "
              f"{len(r.problems)} | {r.seconds} |")  # fmt: skip
    for r in reports:
        for problem in r.problems:
            print(f"PROBLEM ({r.mode}): {problem}")
    sys.exit(1 if any(r.problems for r in reports) else 0)


if __name__ == "__main__":
    main()
