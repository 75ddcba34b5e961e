"""Prometheus metrics (``GET /metrics``): HTTP requests, submitted jobs, jobs by status, job
run time, queue wait and solver iterations of finished jobs, and upload inspections.

Job-level series are computed from the job table at scrape time: workers are separate processes
(or machines), and the table is the one place that sees every job.

Names follow the Prometheus conventions (``gif_`` prefix, base units, ``_total`` counters) with
no job or tenant labels. Each app has its own registry, so several apps can live in one process.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from jobs import store, webhooks
from jobs.db import Database
from jobs.inspector import Inspector
from jobs.states import JobStatus

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _JobsByStatus(Collector):
    """Queries the job table at scrape time."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("gif_jobs", "Jobs by status (all tenants).", labels=["status"])
        try:
            with self.db.read() as session:
                counts = store.count_by_status(session)
        except Exception:  # noqa: BLE001 (a scrape must not fail because the DB is busy)
            counts = {}
        for status in JobStatus:
            family.add_metric([status.value], counts.get(status.value, 0))
        yield family


class _WebhookDeliveries(Collector):
    """The webhook outbox by state at scrape time: a growing ``pending`` says receivers are down,
    ``failed`` counts deliveries given up after the retry horizon (jobs/webhooks.py)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "gif_webhook_deliveries", "Webhook deliveries by state (all tenants).", labels=["state"]
        )
        try:
            with self.db.read() as session:
                counts = webhooks.count_by_state(session)
        except Exception:  # noqa: BLE001 (a scrape must not fail because the DB is busy)
            counts = {}
        for state in ("pending", "delivered", "failed"):
            family.add_metric([state], counts.get(state, 0))
        yield family


SECONDS_BUCKETS = (0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 1800, 3600, 4 * 3600, 12 * 3600)
ITERATION_BUCKETS = (1, 5, 10, 20, 50, 100, 200, 500, 1000, 5000)


class _FinishedJobs(Collector):
    """Histograms over terminal jobs: run seconds, queue wait seconds, solver iterations."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[HistogramMetricFamily]:
        try:
            with self.db.read() as session:
                rows = store.finished_jobs(session)
        except Exception:  # noqa: BLE001 (a scrape must not fail because the DB is busy)
            rows = []
        run: dict[tuple[str, ...], list[float]] = {}
        wait: dict[tuple[str, ...], list[float]] = {}
        iters: dict[tuple[str, ...], list[float]] = {}
        for kind, status, created, started, finished, result_json in rows:
            if started is not None and finished is not None:
                run.setdefault((kind, status), []).append((finished - started).total_seconds())
                wait.setdefault((kind,), []).append((started - created).total_seconds())
            count = _solver_iterations(result_json)
            if count is not None:
                iters.setdefault((kind,), []).append(count)
        yield _histogram(
            "gif_job_run_seconds",
            "Started → finished, terminal jobs.",
            ["type", "status"],
            run,
            SECONDS_BUCKETS,
        )
        yield _histogram(
            "gif_job_queue_wait_seconds", "Created → started, terminal jobs.", ["type"], wait, SECONDS_BUCKETS
        )
        yield _histogram(
            "gif_ihvp_iterations", "Solver iterations of succeeded jobs.", ["type"], iters, ITERATION_BUCKETS
        )


def _solver_iterations(result_json: str | None) -> float | None:
    """Total solver iterations recorded in a job's result summary (edits and scores)."""
    if not result_json:
        return None
    summary = json.loads(result_json).get("summary") or {}
    solver = summary.get("solver")
    value = solver.get("iterations") if isinstance(solver, dict) else summary.get("iterations")
    if isinstance(value, list):
        value = sum(v for v in value if isinstance(v, (int, float)))
    return float(value) if isinstance(value, (int, float)) else None


def _histogram(
    name: str,
    doc: str,
    labels: list[str],
    groups: dict[tuple[str, ...], list[float]],
    buckets: tuple[float, ...],
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for key, values in sorted(groups.items()):
        cumulative = [(str(b), sum(v <= b for v in values)) for b in buckets] + [("+Inf", len(values))]
        family.add_metric(list(key), cumulative, sum(values))
    return family


class _Inspections(Collector):
    """Uploads inspected by an interpreter started ahead (``warm``) or for the upload (``cold``):
    a rising ``cold`` count says ``GIF_INSPECTOR_SPARES`` is too low for the upload rate."""

    def __init__(self, inspector: Inspector) -> None:
        self.inspector = inspector

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily("gif_upload_inspections", "Upload inspections by interpreter start.",
                                     labels=["start"])  # fmt: skip
        family.add_metric(["warm"], self.inspector.warm)
        family.add_metric(["cold"], self.inspector.cold)
        yield family


class Metrics:
    def __init__(self, db: Database, inspector: Inspector | None = None) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "gif_http_requests_total", "HTTP requests.", ["method", "route", "status"], registry=self.registry
        )
        self.duration = Histogram(
            "gif_http_request_duration_seconds",
            "HTTP request duration.",
            ["method", "route"],
            registry=self.registry,
        )
        self.jobs_submitted = Counter(
            "gif_jobs_submitted_total", "Jobs submitted.", ["type"], registry=self.registry
        )
        self.artifact_bytes = Counter(
            "gif_artifact_bytes_received_total", "Bytes of stored uploads.", ["kind"], registry=self.registry
        )
        self.uploads_rejected = Counter(
            "gif_uploads_rejected_total", "Uploads rejected.", ["reason"], registry=self.registry
        )
        self.upload_sessions = Counter(
            "gif_upload_sessions_total",
            "Upload sessions by event (created, completed, refused).",
            ["event"],
            registry=self.registry,
        )
        self.registry.register(_JobsByStatus(db))
        self.registry.register(_FinishedJobs(db))
        self.registry.register(_WebhookDeliveries(db))
        if inspector is not None:
            self.registry.register(_Inspections(inspector))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
