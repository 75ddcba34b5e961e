"""Engine progress events → the job's ``progress`` object, written at most every few tenths of a second.

The engine calls ``callback(event)`` with typed :class:`gif.progress.Progress` events (a ``stage``
and the fields that mean something there: ``iteration``/``max_iter``, ``residual``, ``newton_step``,
``query``, ``attempt``, ...); this turns them into ``{stage, fraction, step, total_steps, message,
updated_at}``. Each write is fenced by the lease
and returns the job's status, which feeds the cancel flag too.
"""

from __future__ import annotations

import time
from typing import Any

from gif.progress import Progress
from jobs import logs, store
from jobs.clock import rfc3339, utcnow
from jobs.db import Database

from .heartbeat import JobSignals

log = logs.get(__name__)


class ProgressReporter:
    """Callable handed to ``gif.remove`` / ``gif.relabel`` / ``gif.scores_with_report``."""

    def __init__(
        self,
        db: Database,
        lease: store.Lease,
        signals: JobSignals,
        *,
        interval: float,
        newton_steps: int = 1,
        deadline_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        """``deadline_errors``: what the job's time limit raises asynchronously (Celery's soft
        limit): it may land inside a write, and must reach the runner, not the warning below."""
        self.db, self.lease, self.signals, self.interval = db, lease, signals, interval
        self.deadline_errors = deadline_errors
        self.newton_steps = max(1, newton_steps)
        self.newton_step = 1
        self._stage: str | None = None
        self._last_write = 0.0

    def stage(self, name: str, message: str = "", fraction: float | None = None) -> None:
        """A service-side stage (``loading_inputs``, ``writing_results``), always written."""
        self._write(
            {"stage": name, "fraction": fraction, "step": None, "total_steps": None, "message": message}
        )

    def __call__(self, event: Progress) -> None:
        if event.stage == "computing_gradients" and event.newton_step is not None:
            self.newton_step = event.newton_step
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
        except self.deadline_errors:
            raise
        except Exception as exc:  # noqa: BLE001 (progress is best effort; the heartbeat keeps the lease)
            log.warning("progress_write_failed", error=f"{type(exc).__name__}: {exc}")
            # the next try waits an interval, as after a write (every write carries the stage)
            self._stage, self._last_write = progress["stage"], time.monotonic()
            return
        self.signals.observe(status)
        self._stage, self._last_write = progress["stage"], time.monotonic()

    def _translate(self, event: Progress) -> dict[str, Any]:
        stage, step, total = event.stage, event.iteration, event.max_iter
        within = event.within()
        message = ""
        if event.residual is not None:
            message = f"iteration {step}/{total}, residual {event.residual:.3e}"
        solves = [("query", event.query, event.num_queries), ("sample", event.sample, event.num_samples)]
        for what, index, count in solves:
            if index is not None:  # one solve of several: the stage's fraction spans them all
                message = f"{what} {index + 1}/{count}: {message}"
                within = (index + within) / max(1, count or 1)
        if stage in _NEWTON_STAGES:
            message = f"newton step {self.newton_step}/{self.newton_steps}" + (
                f": {message}" if message else ""
            )
            solving = stage in ("solving_ihvp", "second_order")
            fraction = (self.newton_step - 1 + (within if solving else 0.0)) / self.newton_steps
        elif stage == "scoring":
            fraction = 0.8 + 0.2 * within
            message = f"training chunk {step}/{total}"
        elif stage == "done":
            fraction = 1.0
        else:
            fraction = 0.8 * within
        if stage == "step_search" and event.scale is not None:
            message += f", scale {event.scale:.3g}, objective {event.objective or 0.0:.4f}"
        if event.attempt is not None and event.attempts:
            # each run of an edit that may run several (a head attempt, a guard) starts its Newton
            # steps again: its share of the job, so the fraction never goes back
            fraction = (event.attempt - 1 + min(max(fraction, 0.0), 1.0)) / event.attempts
            message = f"attempt {event.attempt}/{event.attempts}" + (f": {message}" if message else "")
        return {
            "stage": stage,
            "fraction": round(min(max(fraction, 0.0), 1.0), 4),
            "step": step,
            "total_steps": total,
            "message": message,
        }


#: Stages inside an edit's outer Newton step (their message and fraction name the step).
_NEWTON_STAGES = (
    "selecting_parameters",
    "computing_gradients",
    "solving_ihvp",
    "second_order",
    "step_search",
)
