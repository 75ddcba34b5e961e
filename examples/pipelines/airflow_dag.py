"""An Airflow-style DAG for gif-service: submit a class removal, wait with a sensor, download.

- ``submit_removal`` submits with an idempotency key built from ``dag_id/run_id/task_id``, so a
  retried task gets the same job back, and pushes ``job_id`` to XCom (its return value).
- ``wait_for_job`` is a ``PythonSensor`` in ``reschedule`` mode: each poke is one
  ``GET /v1/jobs/{id}``; the worker slot is freed between pokes. A failed or cancelled job fails
  the sensor at once instead of poking until its timeout.
- ``download_weights`` pulls the edited weights (SHA-256 checked).

Connection settings come from the environment (``GIF_BASE_URL``, ``GIF_API_KEY``), e.g. set from
an Airflow connection or secret. The module imports without Airflow installed (the DAG is then
``None``) so that its callables can be tested on their own.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from gif_client import Client

try:  # Airflow is optional: the callables below need only gif_client.
    from airflow import DAG
    from airflow.exceptions import AirflowFailException
    from airflow.operators.python import PythonOperator
    from airflow.sensors.python import PythonSensor
except ImportError:  # pragma: no cover - depends on the environment
    DAG = None

    class AirflowFailException(RuntimeError):  # type: ignore[no-redef]
        """Stand-in so the callables behave the same without Airflow."""


CHECKPOINT_ID = "art_checkpoint"  # ids of artifacts uploaded earlier (e.g. by an upstream task)
DATASET_ID = "art_dataset"
FORGET_CLASS = 3
MODEL = {"arch": "mlp", "config": {"input_shape": [1, 8, 8], "hidden_sizes": [32], "num_classes": 10}}


def removal_body(checkpoint_id: str, dataset_id: str, forget_class: int) -> dict[str, Any]:
    return {
        "type": "remove",
        "model": {**MODEL, "checkpoint": checkpoint_id},
        "train": dataset_id,
        "forget": {"class": forget_class},
        "options": {"method": "gif"},
    }


def submit_removal(dag_id: str, run_id: str, task_id: str, client: Client | None = None) -> str:
    """Submit (idempotent per DAG run and task); the returned job id goes to XCom."""
    with client or Client() as c:
        job = c.submit(
            removal_body(CHECKPOINT_ID, DATASET_ID, FORGET_CLASS),
            idempotency_key=f"{dag_id}/{run_id}/{task_id}",
        )
    return job["id"]


def job_finished(job_id: str, client: Client | None = None) -> bool:
    """Sensor poke: True once succeeded, False while running; failed/cancelled fail the task."""
    with client or Client() as c:
        job = c.job(job_id)
    if job["status"] == "succeeded":
        return True
    if job["status"] in ("failed", "cancelled"):
        error = job.get("error") or {}
        raise AirflowFailException(
            f"gif job {job_id} {job['status']}: {error.get('code')} {error.get('message')}"
        )
    return False


def download_weights(job_id: str, path: str, client: Client | None = None) -> str:
    with client or Client() as c:
        job = c.job(job_id)
        return str(c.download(c.result_artifact(job, "weights")["id"], path))


if DAG is not None:  # pragma: no cover - needs Airflow
    with DAG(
        dag_id="gif_remove_class",
        start_date=datetime(2024, 1, 1),
        schedule=None,
        catchup=False,
        default_args={"retries": 2, "retry_delay": timedelta(minutes=1)},
    ) as dag:
        submit = PythonOperator(
            task_id="submit_removal",
            python_callable=lambda **ctx: submit_removal(
                ctx["dag"].dag_id, ctx["run_id"], ctx["task"].task_id
            ),
        )
        wait = PythonSensor(
            task_id="wait_for_job",
            python_callable=job_finished,
            op_kwargs={"job_id": "{{ ti.xcom_pull(task_ids='submit_removal') }}"},
            mode="reschedule",
            poke_interval=30,
            timeout=6 * 3600,
        )
        fetch = PythonOperator(
            task_id="download_weights",
            python_callable=download_weights,
            op_kwargs={
                "job_id": "{{ ti.xcom_pull(task_ids='submit_removal') }}",
                "path": "/tmp/gif/{{ run_id }}/weights.safetensors",
            },
        )
        submit >> wait >> fetch
else:
    dag = None
