"""Chaos in CI (short): a batch of jobs while the API, a worker process, a worker node, the
broker and the database server are each SIGKILLed, a job's process is frozen past its lease and
(first run) a worker's network link is cut, at random moments; afterwards nothing is lost,
duplicated or corrupted (tests/chaos.py has the faults and the invariants; bench/chaos.py runs
long batches). The second run keeps the blobs in an S3-compatible bucket."""

from __future__ import annotations

import pytest

from tests.chaos import faults_for, run_chaos
from tests.stack import Stack

pytestmark = pytest.mark.slow


# CI runs distributed mode, which has every kind of fault; `python bench/chaos.py` runs both
# modes with long batches (embedded mode's API and worker kills are also in test_e2e.py).
# The first run has a worker behind a network link that is cut for a while (a partition: needs
# root and iproute2); the second keeps its blobs in an S3-compatible bucket, every process with a
# data folder of its own.
@pytest.mark.parametrize(("mode", "jobs", "seed", "bucket"), [("distributed", 8, 2, False), ("distributed", 6, 5, True)],
                         ids=["shared-folder-and-partition", "bucket"])  # fmt: skip
def test_no_job_lost_duplicated_or_corrupted_under_faults(tmp_path, files, mode, jobs, seed, bucket):
    partitioned = 0 if bucket else 1
    env = {"GIF_DATABASE_TIMEOUT_SECONDS": "4"}  # a cut-off worker notices within seconds
    with Stack(mode, tmp_path, workers=2, own_postgres=True, bucket=bucket, partitioned_workers=partitioned,
               extra_env=env) as stack:  # fmt: skip
        inputs = stack.upload(files)
        faults = len(faults_for(mode, bool(partitioned)))
        report = run_chaos(
            stack, inputs, jobs=jobs, seed=seed, interval=(1.0, 3.0), max_faults=faults, timeout=300
        )
    assert report.problems == [], report
    # one of each kind: API, a job's process killed or frozen past its lease, a worker node, the
    # broker, the database server (the job-process faults wait for a running job, so they may not
    # have happened)
    assert set(faults_for(mode, bool(partitioned))) - set(report.faults) <= {"worker", "pause"}, report
    assert sum(report.statuses.values()) == jobs
    # a fault may cost a job its attempts (worker_lost), never its outcome
    assert set(report.error_codes) <= {"worker_lost"}, report
    assert report.statuses.get("succeeded", 0) >= jobs // 2, report
    # the sweep left exactly the files that artifacts name, all intact (checked again after it)
    assert report.blobs_after_sweep == report.blobs_checked - report.orphans_swept, report
