"""The pipeline examples: the Airflow DAG imports without Airflow; the shell script runs for real."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gif_client import Client
from tests.stack import KEY

PIPELINES = Path(__file__).resolve().parents[2] / "examples" / "pipelines"


def _load_dag():
    spec = importlib.util.spec_from_file_location("gif_airflow_dag", PIPELINES / "airflow_dag.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_airflow_dag_imports_and_its_sensor_pokes():
    dag = _load_dag()
    states = iter(["running", "succeeded", "failed"])

    def handler(request):
        if request.method == "POST":
            assert request.headers["idempotency-key"] == "d/r/t"
            return httpx.Response(202, json={"id": "job_9", "status": "queued"})
        return httpx.Response(200, json={"id": "job_9", "status": next(states), "error": None})

    def client():
        return Client("http://svc", api_key="k", transport=httpx.MockTransport(handler))

    assert dag.submit_removal("d", "r", "t", client=client()) == "job_9"
    assert dag.job_finished("job_9", client=client()) is False
    assert dag.job_finished("job_9", client=client()) is True
    with pytest.raises(dag.AirflowFailException):
        dag.job_finished("job_9", client=client())


@pytest.mark.slow
def test_remove_class_script(server, files, tmp_path):
    env = dict(os.environ, GIF_BASE_URL=server.url, GIF_API_KEY=KEY, RUN_ID="test-run-1",
               GIF_CLI=f"{sys.executable} -m service")  # fmt: skip
    out = tmp_path / "edited"
    run = subprocess.run(
        ["bash", str(PIPELINES / "remove_class.sh"), str(files["checkpoint"]), str(files["train"]), "6", str(out)],
        check=False, env=env, capture_output=True, text=True, timeout=180, cwd=PIPELINES.parents[1],
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    job = json.loads((out / "job.json").read_text())
    assert job["status"] == "succeeded" and (out / "weights.safetensors").is_file()
    rerun = subprocess.run(
        run.args, check=False, env=env, capture_output=True, text=True, timeout=180, cwd=PIPELINES.parents[1]
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert json.loads((out / "job.json").read_text())["id"] == job["id"]  # same RUN_ID: same job
