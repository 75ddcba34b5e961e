"""``gif-service`` client commands and their exit codes, against the real server (CliRunner)."""

from __future__ import annotations

import hashlib
import json
import socket

import pytest
from typer.testing import CliRunner

from service.cli import app
from tests.stack import KEY

from .conftest import remove_body

pytestmark = pytest.mark.slow

runner = CliRunner()


def cli(server, *args: str, key: str = KEY):
    return runner.invoke(app, ["--url", server.url, "--api-key", key, *args])


def test_upload_submit_wait_output(server, files, tmp_path):
    ids = {}
    for name, kind in (("checkpoint", "checkpoint"), ("train", "dataset")):
        result = cli(server, "upload", str(files[name]), "--kind", kind)
        assert result.exit_code == 0, result.output
        ids[name] = json.loads(result.stdout)
    body = tmp_path / "body.json"
    body.write_text(json.dumps(remove_body(ids, cls=4)))
    out = tmp_path / "results"
    result = cli(server, "submit", str(body), "--wait", "--timeout", "120", "--poll", "0.2",
                 "--idempotency-key", "cli-run-1", "--output", str(out))  # fmt: skip
    assert result.exit_code == 0, result.output
    job = json.loads(result.stdout)
    assert job["status"] == "succeeded"
    for entry in job["result"]["artifacts"]:
        path = out / f"{entry['kind']}.{entry['format']}"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
    assert "succeeded" in result.stderr  # progress goes to stderr

    status = cli(server, "status", job["id"])
    assert status.exit_code == 0 and json.loads(status.stdout)["id"] == job["id"]
    waited = cli(server, "wait", job["id"], "--timeout", "5")
    assert waited.exit_code == 0
    listed = cli(server, "jobs", "--status", "succeeded", "--limit", "1")
    assert listed.exit_code == 0 and len(listed.stdout.strip().splitlines()) == 1
    weights = next(e for e in job["result"]["artifacts"] if e["kind"] == "weights")
    dl = cli(server, "download", weights["id"], str(tmp_path / "w.safetensors"))
    assert dl.exit_code == 0 and (tmp_path / "w.safetensors").is_file()
    assert cli(server, "cancel", job["id"]).exit_code == 2  # 409 job-not-cancellable
    refused = cli(server, "terminate", job["id"])  # an admin key, but the job is not cancelling
    assert refused.exit_code == 2 and "job-not-terminable" in refused.output
    # --webhook reaches the server, which refuses a loopback receiver unless the operator allows it
    hooked = cli(server, "submit", str(body), "--webhook", "http://127.0.0.1:9/hook")
    assert hooked.exit_code == 2 and "webhook-target-forbidden" in hooked.output
    # another class from the same checkpoint and data: estimated from the finished job
    body.write_text(json.dumps(remove_body(ids, cls=5)))
    again = cli(server, "submit", str(body))
    assert again.exit_code == 0, again.output
    estimate = json.loads(again.stdout)["estimate"]
    assert estimate["based_on"] >= 1 and f"about {estimate['seconds']:.0f} s (the median of" in again.stderr


def test_exit_codes_for_errors(server, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"type": "remove", "nonsense": 1}))
    result = cli(server, "submit", str(bad), "--wait")
    assert result.exit_code == 2 and "validation-error" in result.stderr

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    assert cli(server, "submit", str(garbage)).exit_code == 2
    assert cli(server, "status", "job_nope").exit_code == 2
    assert cli(server, "upload", str(bad), "--kind", "weights").exit_code == 2

    assert cli(server, "submit", str(bad), key="wrong-key-0123456789").exit_code == 5
    assert cli(server, "jobs", key="wrong-key-0123456789").exit_code == 5

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    gone = runner.invoke(app, ["--url", f"http://127.0.0.1:{dead}", "--api-key", KEY, "status", "job_x"])
    assert gone.exit_code == 6, gone.output


def test_upload_in_parts_and_resume(server, files, tmp_path):
    data = files["queries"].read_bytes()
    result = cli(server, "upload", str(files["queries"]), "--kind", "dataset", "--parts")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["sha256"] == hashlib.sha256(data).hexdigest()
    missing = cli(
        server,
        "upload",
        str(files["queries"]),
        "--kind",
        "dataset",
        "--resume",
        "upl_01JD3Q7W8M6Z5K2R9T0V4X1YBC",
    )
    assert missing.exit_code != 0 and "not-found" in missing.output
