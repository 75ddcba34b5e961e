"""One source of truth for progress: the CLI's ``wait`` prints ``gif_client.progress_line`` of
the job object the API returns (the job page shows the same line: tests/browser/test_job_page.py)."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from typer.testing import CliRunner

from gif_client import percent, progress_line
from service.cli import app
from tests.stack import KEY

from .conftest import remove_body

STATUSES = "validating|queued|running|cancelling|succeeded|failed|cancelled"


@pytest.mark.parametrize(
    ("fraction", "shown"),
    [(None, None), (0, 0), (0.005, 0), (0.29, 28), (0.57, 56), (0.999, 99), (1, 100), (2, 100),
     (-1, 0), ("0.5", None), (True, None), (float("nan"), None), (float("inf"), None)],
)  # fmt: skip
def test_a_fraction_is_a_whole_percentage_rounded_down(fraction, shown):
    # 0.29 * 100 is 28.999999999999996 in IEEE doubles: the browser's Math.floor says 28 too
    assert percent(fraction) == shown


def test_the_line_holds_the_job_fields_as_given():
    job = {
        "status": "running",
        "progress": {"stage": "solving_ihvp", "fraction": 0.5, "message": "newton step 1/2"},
    }
    assert progress_line(job) == "running solving_ihvp 50% newton step 1/2"
    assert progress_line({"status": "queued", "progress": None}) == "queued"
    assert (
        progress_line({"status": "running", "progress": {"stage": "loading_inputs"}})
        == "running loading_inputs"
    )


@pytest.mark.slow
def test_the_cli_wait_prints_the_line_of_the_job_json(server, client, uploaded):
    job = client.submit(remove_body(uploaded, cls=5))
    result = CliRunner().invoke(
        app, ["--url", server.url, "--api-key", KEY, "wait", job["id"], "--poll", "0.1"]
    )
    assert result.exit_code == 0, result.output
    final = json.loads(result.stdout)
    lines = result.stderr.strip().splitlines()
    prefix = f"[{job['id']}] "
    assert all(line.startswith(prefix) for line in lines), lines
    assert all(re.match(rf"({STATUSES})( |$)", line[len(prefix) :]) for line in lines), lines
    assert lines[-1] == prefix + progress_line(final)
    assert all(a != b for a, b in itertools.pairwise(lines))  # a line is printed when it changes
