"""The step search (gif/steps.py) on objectives whose maximiser is known."""

from __future__ import annotations

import math

import pytest

from gif.errors import Cancelled
from gif.steps import search_step

GRID = {"min_scale": 1e-5, "max_scale": 1.0, "growth": 4.0, "patience": 2}


def peaked(at: float, width: float = 1.0):
    """A smooth objective in (0, 1) whose maximum is at t = ``at`` (a bump in log t), 0.5 at t = 0."""
    calls: list[float] = []

    def objective(t: float) -> tuple[float, dict]:
        calls.append(t)
        if t == 0.0:
            return 0.5, {"t": t}
        return 0.5 + 0.4 * math.exp(-((math.log(t / at) / width) ** 2)), {"t": t}

    return objective, calls


@pytest.mark.parametrize("at", [3e-5, 2e-3, 0.05, 0.7])
def test_the_search_finds_a_smooth_maximum_to_within_a_fifth(at):
    objective, calls = peaked(at)
    out = search_step(objective, **GRID, refine=4)
    assert abs(math.log(out.scale / at)) < math.log(1.2)
    assert out.metrics == {"t": out.scale}  # the metrics of the chosen point, not the last one tried
    assert len(calls) == len(set(calls)) == out.as_dict()["evaluations"]  # no point measured twice
    assert len(calls) <= 15  # t = 0, ten grid points at most, four refinements


def test_refining_more_narrows_the_bracket():
    errors = []
    for refine in (0, 2, 4, 8):
        out = search_step(peaked(0.0123)[0], **GRID, refine=refine)
        errors.append(abs(math.log(out.scale / 0.0123)))
    assert errors == sorted(errors, reverse=True) and errors[-1] < math.log(1.05)


def test_no_improving_step_returns_zero():
    out = search_step(lambda t: (0.5 - t, {}), **GRID)
    assert out.scale == 0.0 and out.objective == 0.5


def test_a_search_that_only_makes_the_model_worse_stops_after_patience_falls():
    """Tiny steps leave the (piecewise-constant) objective as it is; once steps make it worse
    ``patience`` times in a row, longer ones are not tried."""
    calls: list[float] = []

    def objective(t: float) -> tuple[float, dict]:
        calls.append(t)
        return (0.8 if t < 1e-3 else 0.8 - t), {}

    out = search_step(objective, **GRID)
    assert out.scale == 0.0 and out.objective == 0.8
    assert calls == [0.0, 1e-5, 4e-5, 1.6e-4, 6.4e-4, 2.56e-3, 1.024e-2]  # not up to max_scale = 1
    flat_then_better: list[float] = []

    def late(t: float) -> tuple[float, dict]:  # equal values are no reason to stop
        flat_then_better.append(t)
        return (0.9 if t >= 0.1 else 0.8), {}

    assert search_step(late, **GRID, refine=0).scale == pytest.approx(0.16384)


def test_the_search_stops_at_the_objectives_maximum_and_keeps_the_smallest_such_step():
    calls: list[float] = []

    def objective(t: float) -> tuple[float, dict]:
        calls.append(t)
        return (1.0 if t >= 1e-3 else 0.5), {}

    out = search_step(objective, **GRID, refine=4)
    assert 1e-3 <= out.scale < 1e-3 * 4
    assert max(calls) < 1e-2  # nothing above the first grid point that reached 1 was tried


def test_ties_go_to_the_smaller_step():
    out = search_step(lambda t: (0.9 if t >= 1e-4 else 0.5, {}), **GRID, refine=0)
    assert out.scale == pytest.approx(1.6e-4)  # the first grid point on the plateau


def test_a_stop_request_cancels_the_search():
    seen = []

    def stop() -> bool:
        seen.append(1)
        return len(seen) > 3

    with pytest.raises(Cancelled):
        search_step(peaked(0.05)[0], **GRID, should_stop=stop)


def test_the_grid_ends_at_the_largest_allowed_step():
    # an objective that only responds near max_scale, which no point of the ×4 grid from 1e-5 hits
    out = search_step(lambda t: (1.0 if t >= 0.9 else 0.0, {}), **GRID, refine=0)
    assert out.scale == 1.0 and out.objective == 1.0
