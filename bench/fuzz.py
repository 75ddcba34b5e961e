"""Contract fuzzing with a large budget against a real server (a long run, not part of CI).

Starts the service with ``tests/stack.py`` — ``gif-service serve`` (uvicorn) on a free port of
127.0.0.1 with a fresh ``GIF_HOME`` and the test tenants' keys; ``--mode distributed`` adds a
private redis-server, a PostgreSQL database of its own (``GIF_TEST_POSTGRES``) and Celery workers —
then runs ``tests/service/test_contract_fuzz.py`` against it over HTTP (``GIF_FUZZ_URL``) with the
budgets given here: the same Schemathesis checks as the suite (no 5xx, status codes, content types,
headers and bodies as documented, invalid input rejected, valid input accepted, auth enforced,
problem+json errors), many more examples, longer state-machine scenarios.

    .venv/bin/python bench/fuzz.py                                  # ~15-30 min on 2 cores
    .venv/bin/python bench/fuzz.py --max-examples 50 --scenarios 20  # smoke run, a few minutes
    .venv/bin/python bench/fuzz.py --mode distributed               # PostgreSQL + Celery + redis
    .venv/bin/python bench/fuzz.py -- -x --hypothesis-seed=1        # extra pytest arguments

``--workers 0`` (the default) leaves jobs queued, which keeps the state machine's scenarios
replayable; with workers, jobs finish while the fuzzer runs, so the result links are followed too,
but Hypothesis may report a scenario as flaky when a replay meets a job further along. Every upload
of a new file runs the real inspector (seconds each), which is why ``--upload-examples`` is
separate. Failures print Schemathesis' reproduction (a curl command); the server's logs are
under the printed folder, kept when the run fails. Exit status: pytest's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.service.conftest import KEYS  # noqa: E402  (tenant keys the test module sends)
from tests.stack import Stack  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mode", choices=("embedded", "distributed"), default="embedded")
    ap.add_argument("--workers", type=int, default=0, help="job workers (default 0: jobs stay queued)")
    ap.add_argument("--max-examples", type=int, default=1000, help="per operation, fuzzing phase")
    ap.add_argument("--upload-examples", type=int, default=60, help="for POST /v1/artifacts (inspector runs)")
    ap.add_argument("--scenarios", type=int, default=300, help="state-machine scenarios")
    ap.add_argument("--steps", type=int, default=20, help="steps per scenario at most")
    ap.add_argument("pytest_args", nargs="*", help="after --: passed to pytest")
    args = ap.parse_args()

    home = Path(tempfile.mkdtemp(prefix="gif-fuzz-server-"))
    stack = Stack(args.mode, home, workers=args.workers)
    stack.env.update(
        GIF_API_KEYS=",".join(f"{tenant}:{key}" for tenant, key in KEYS.items()),
        # no admission limits: the fuzzer sends thousands of requests, submits many jobs and opens
        # many upload sessions (a limit reached changes later answers: tests/service/test_contract_fuzz.py)
        GIF_RATE_LIMIT_PER_SECOND="0", GIF_MAX_ACTIVE_JOBS_PER_TENANT="0", GIF_MAX_WAITING_JOBS="0",
        GIF_MAX_OPEN_UPLOADS_PER_TENANT="1000000",
    )  # fmt: skip
    started = time.monotonic()
    status = 1
    try:
        stack.start()
        url = f"http://127.0.0.1:{stack.port}"
        print(f"fuzzing {url} ({args.mode}, {args.workers} worker(s)); server logs in {home}", flush=True)
        env = dict(
            os.environ,
            GIF_FUZZ_URL=url,
            GIF_FUZZ_MAX_EXAMPLES=str(args.max_examples),
            GIF_FUZZ_UPLOAD_MAX_EXAMPLES=str(args.upload_examples),
            GIF_FUZZ_STATEFUL_SCENARIOS=str(args.scenarios),
            GIF_FUZZ_STATEFUL_STEPS=str(args.steps),
        )
        command = [
            sys.executable, "-m", "pytest", "tests/service/test_contract_fuzz.py",
            "-p", "no:cacheprovider", "--timeout=0", "-q", *args.pytest_args,
        ]  # fmt: skip
        status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
    finally:
        stack.close()
        minutes = (time.monotonic() - started) / 60
        print(f"summary: contract fuzz {'passed' if status == 0 else 'FAILED'} in {minutes:.1f} min "
              f"({args.mode}, max_examples={args.max_examples}, scenarios={args.scenarios})")  # fmt: skip
        if status == 0:
            shutil.rmtree(home, ignore_errors=True)
        else:
            print(f"server logs kept in {home}")
    return status


if __name__ == "__main__":
    sys.exit(main())
