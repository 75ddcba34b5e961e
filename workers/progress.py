"""Engine progress events → the job's ``progress`` object, written at most every few tenths of a second.

The engine calls ``callback(event)`` with dicts such as ``{"stage": "solving_ihvp", "iteration",
"max_iter", "residual"}`` (see gif/edits.py and gif/scores.py); this turns them into
``{stage, fraction, step, total_steps, message, updated_at}``. Each write is fenced by the lease
and returns the job's status, which feeds the cancel flag too.
"""

from __future__ import annotations

import time
from typing import Any

from jobs import logs, store
from jobs.clock import rfc3339, utcnow
from jobs.db import Database

from .heartbeat import JobSignals

log = logs.get(__name__)


class ProgressReporter:
    """Callable handed to ``gif.remove`` / ``gif.relabel`` / ``gif.scores_with_report``."""

    def __init__(
        self, db: Database, lease: store.Lease, signals: JobSignals, *, interval: float, newton_steps: int = 1
    ) -> None:
        self.db, self.lease, self.signals, self.interval = db, lease, signals, interval
        self.newton_steps = max(1, newton_steps)
        self.newton_step = 1
        self._stage: str | None = None
        self._last_write = 0.0

    def stage(self, name: str, message: str = "", fraction: float | None = None) -> None:
        """A service-side stage (``loading_inputs``, ``writing_results``), always written."""
        self._write(
            {"stage": name, "fraction": fraction, "step": None, "total_steps": None, "message": message}
        )

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("stage") == "computing_gradients" and "newton_step" in event:
            self.newton_step = int(event["newton_step"])
        progress = self._translate(event)
        now = time.monotonic()
        if progress["stage"] != self._stage or now - self._last_write >= self.interval:
            self._write(progress)

    def _write(self, progress: dict[str, Any]) -> None:
        if self.signals.lease_lost.is_set():
            return  # nothing of this attempt is written any more (and the database may be out of reach)
        progress["updated_at"] = rfc3339(utcnow())
        try:
            with self.db.begin() as session:
                status = store.update_progress(session, self.lease, progress)
        except Exception as exc:  # noqa: BLE001 (progress is best effort; the heartbeat keeps the lease)
            log.warning("progress_write_failed", error=f"{type(exc).__name__}: {exc}")
            # the next try waits an interval, as after a write (every write carries the stage)
            self._stage, self._last_write = progress["stage"], time.monotonic()
            return
        self.signals.observe(status)
        self._stage, self._last_write = progress["stage"], time.monotonic()

    def _translate(self, event: dict[str, Any]) -> dict[str, Any]:
        stage = str(event.get("stage", "running"))
        step, total = event.get("iteration"), event.get("max_iter")
        within = step / total if isinstance(step, int) and isinstance(total, int) and total else 0.0
        message = ""
        if "residual" in event:
            message = f"iteration {step}/{total}, residual {float(event['residual']):.3e}"
        if "query" in event:
            message = f"query {event['query'] + 1}/{event['num_queries']}: {message}"
            within = (event["query"] + within) / max(1, event["num_queries"])
        if stage in ("solving_ihvp", "step_search", "computing_gradients", "selecting_parameters"):
            message = f"newton step {self.newton_step}/{self.newton_steps}" + (
                f": {message}" if message else ""
            )
            fraction = (
                self.newton_step - 1 + (within if stage == "solving_ihvp" else 0.0)
            ) / self.newton_steps
        elif stage == "scoring":
            fraction = 0.8 + 0.2 * within
            message = f"training chunk {step}/{total}"
        elif stage == "done":
            fraction = 1.0
        else:
            fraction = 0.8 * within
        if stage == "step_search" and "scale" in event:
            message += (
                f", scale {float(event['scale']):.3g}, objective {float(event.get('objective', 0.0)):.4f}"
            )
        return {
            "stage": stage,
            "fraction": round(min(max(fraction, 0.0), 1.0), 4),
            "step": step if isinstance(step, int) else None,
            "total_steps": total if isinstance(total, int) else None,
            "message": message,
        }
