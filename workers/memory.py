"""A job's peak resident memory on the CPU (its provenance's ``compute.peak_rss_bytes``).

A worker process runs many jobs, so the process-wide peak (``ru_maxrss``) would report the
largest job so far. On Linux the kernel's high-water mark (``VmHWM`` in ``/proc/self/status``) is
reset by writing ``5`` to ``/proc/self/clear_refs``; :func:`reset_peak_rss` does that when a job
starts and :func:`peak_rss` reads it when the job ends. Where the reset is not possible the figure
is the process's peak since it started, and says so.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path
from typing import Any

_CLEAR_REFS = Path("/proc/self/clear_refs")
_STATUS = Path("/proc/self/status")


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process; False where it cannot be reset."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return False
    return True


def peak_rss(since_reset: bool) -> dict[str, Any]:
    """``{"peak_rss_bytes": n, "peak_rss_scope": "job" | "process"}``."""
    high_water = _vm_hwm_bytes()
    if since_reset and high_water is not None:
        return {"peak_rss_bytes": high_water, "peak_rss_scope": "job"}
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return {"peak_rss_bytes": int(maxrss) * scale, "peak_rss_scope": "process"}


def _vm_hwm_bytes() -> int | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
