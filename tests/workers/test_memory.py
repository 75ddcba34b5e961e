"""A job's peak RSS: the kernel's high-water mark, reset when a job starts (workers/memory.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workers.memory import peak_rss, reset_peak_rss


def test_the_peak_covers_what_was_allocated_since_the_reset_and_not_before():
    big = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    before = peak_rss(True)["peak_rss_bytes"]
    del big
    assert reset_peak_rss()  # Linux: /proc/self/clear_refs
    after_reset = peak_rss(True)
    assert after_reset["peak_rss_scope"] == "job" and after_reset["peak_rss_bytes"] < before - 200 * 2**20
    # measured from the resident size just before allocating: memory another thread of the test
    # process frees after the reset lowers it, and the new pages then fill that room first
    resident = _resident_bytes()
    again = np.ones(100 * 2**20 // 8)
    grown = peak_rss(True)["peak_rss_bytes"]
    assert grown >= resident + 90 * 2**20
    del again


def test_without_a_reset_the_figure_is_the_process_peak():
    figure = peak_rss(False)
    assert figure["peak_rss_scope"] == "process" and figure["peak_rss_bytes"] > 0


def _resident_bytes() -> int:
    """VmRSS of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")
