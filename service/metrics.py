"""Prometheus metrics (``GET /metrics``): HTTP requests, submitted jobs, jobs by status.

Names follow the Prometheus conventions (``gif_`` prefix, base units, ``_total`` counters) with
no job or tenant labels. Each app has its own registry, so several apps can live in one process.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from jobs import store
from jobs.db import Database
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


class Metrics:
    def __init__(self, db: Database) -> None:
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
        self.registry.register(_JobsByStatus(db))

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.duration.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
