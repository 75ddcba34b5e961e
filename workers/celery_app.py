"""The Celery application of distributed mode, configured from ``Settings``.

Rationale of each setting: docs/service-design.md, "Celery settings".

The broker is only a transport: the job row is the truth, every task is idempotent (claims are
compare-and-set) and the API's sweeper republishes what a broker loses. Hence late acks with
reject-on-worker-lost (a SIGKILLed child's message comes back), prefetch 1 (no hoarding of long
jobs), JSON only (no pickle over the wire) and a visibility timeout above the longest job, set
in all three places Celery reads it (otherwise a long job is redelivered, and run again, every hour).

Importing this module imports neither torch nor CUDA: the parent of the prefork pool must never
initialise CUDA (children would fail with "Cannot re-initialize CUDA in forked subprocess").
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from jobs.config import Settings

VALIDATE_TASK = "gif.validate_job"
RUN_TASK = "gif.run_job"
CPU_QUEUE = "cpu"


#: Remote-control command of the admin backstop (registered by ``workers.tasks`` in the workers).
TERMINATE_COMMAND = "gif_terminate"


def gpu_queue(pool: str) -> str:
    return f"gpu.{pool}"


def celery_config(settings: Settings) -> dict[str, Any]:
    """Celery settings for ``settings`` (H = ``settings.max_job_seconds``)."""
    longest = settings.max_job_seconds
    visibility = int(longest + 1800)
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": {
            "visibility_timeout": visibility,
            "socket_keepalive": True,
            "health_check_interval": 30,
            "socket_connect_timeout": 5,
            "socket_timeout": 30,
        },
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "visibility_timeout": visibility,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 5,
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,
        "result_backend": None,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "task_acks_on_failure_or_timeout": True,
        "worker_prefetch_multiplier": 1,
        "worker_max_tasks_per_child": 20,
        "worker_proc_alive_timeout": 60,  # a child's start-up on a busy host can take seconds
        "worker_soft_shutdown_timeout": 60,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "worker_send_task_events": True,
        "task_send_sent_event": True,
        "worker_hijack_root_logger": False,
        "task_default_queue": CPU_QUEUE,
        "task_routes": {
            VALIDATE_TASK: {"queue": CPU_QUEUE},
            RUN_TASK: {"queue": gpu_queue(settings.gpu_pool)},
        },
        "task_soft_time_limit": longest,
        "task_time_limit": longest + 300,
    }


def make_app(settings: Settings | None = None) -> Celery:
    settings = settings or Settings()
    app = Celery("gif", include=["workers.tasks"])
    app.conf.update(celery_config(settings))
    app.conf.gif_settings = settings
    return app


app = make_app()
