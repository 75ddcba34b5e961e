"""One line of progress from a job object, shown the same by the CLI, the SDK and the job page.

The job view (``GET /v1/jobs/{id}``) is the single source of truth: its ``progress`` carries
``stage``, ``fraction`` and ``message`` as the worker wrote them (workers/progress.py). Clients
add no labels of their own; they only choose how to print those fields, and that choice lives
here. The job page mirrors these rules in service/ui/static/progress.js, and the browser test
(tests/browser/test_job_page.py) checks that the page shows the line this module computes.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["percent", "progress_line"]


def percent(fraction: Any) -> int | None:
    """A fraction in [0, 1] as a whole percentage, rounded down (so that 100% means done and a
    browser's ``Math.floor`` gives the same number: both use IEEE doubles); None when absent or
    not a finite number."""
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)) or not math.isfinite(fraction):
        return None
    return max(0, min(100, math.floor(100 * fraction)))


def progress_line(job: dict[str, Any]) -> str:
    """``status stage NN% message``, leaving out what the job does not say."""
    progress = job.get("progress") or {}
    share = percent(progress.get("fraction"))
    parts = [
        str(job.get("status") or ""),
        str(progress.get("stage") or ""),
        f"{share}%" if share is not None else "",
        str(progress.get("message") or ""),
    ]
    return " ".join(part for part in parts if part)
