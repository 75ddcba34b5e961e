"""Step policies: how far to move along an influence update d (docs/method.md, "Step size").

d is a Newton step on the edited objective, but on a trained network the quadratic model behind
it is only trusted near θ, and d at full scale usually wrecks the model. ``newton`` takes
θ_T ← θ_T + d (the theory's answer); ``search`` takes θ_T ← θ_T + t·d for the t that maximises a
validation objective (:func:`search_step`). Unlike the paper's search (docs/method.md, "Step
chosen on test data"), only validation data and the edited samples themselves are evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .errors import Cancelled

Objective = Callable[[float], tuple[float, dict]]


@dataclass
class StepOutcome:
    """The chosen scale t (in units of the Newton step), its objective, and every point tried."""

    policy: str
    scale: float
    objective: float
    metrics: dict
    trace: list[dict] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "policy": self.policy,
            "scale": self.scale,
            "objective": self.objective,
            "evaluations": len(self.trace),
            "trace": self.trace,
        }


def newton_step(objective: Objective) -> StepOutcome:
    value, metrics = objective(1.0)
    return StepOutcome("newton", 1.0, value, metrics, [{"scale": 1.0, "objective": value}])


def search_step(
    objective: Objective,
    *,
    min_scale: float,
    max_scale: float,
    growth: float,
    patience: int,
    refine: int = 4,
    should_stop: Callable[[], bool] | None = None,
) -> StepOutcome:
    """Maximise ``objective(t)`` over t ∈ {0} ∪ a geometric grid t₀·γ^k, then refine around the best.

    The grid stops after ``patience`` non-improving steps past an improvement, after ``patience``
    steps in a row worse than no step, or at the objective's maximum (1). It brackets the best
    step within a factor γ either side; ``refine`` evaluations of a golden-section search on log t
    then narrow that bracket by 0.618 each (docs/benchmarks.md, "A cheaper step search"). Ties go
    to the smaller step (the smaller change to the model).
    """
    tried: dict[float, tuple[float, dict]] = {}

    def visit(t: float) -> float:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled by the caller during the step search")
        if t not in tried:
            tried[t] = objective(t)
        return tried[t][0]

    best_t, best = 0.0, visit(0.0)
    misses = worse = 0
    for t in _grid(min_scale, max_scale, growth):
        if best >= 1.0:
            break
        value = visit(t)
        if value > best + 1e-12:
            best_t, best, misses, worse = t, value, 0, 0
            continue
        misses += 1
        # below the model as it is, ``patience`` times in a row: longer steps will not help
        worse = worse + 1 if value < best - 1e-12 else 0
        if misses >= patience and (best_t > 0.0 or worse >= patience):
            break
    if best_t > 0.0 and refine > 0:
        best_t, best = _golden_refine(visit, best_t, best, growth, refine)
    trace = [{"scale": t, "objective": v} for t, (v, _) in sorted(tried.items())]
    return StepOutcome("search", best_t, best, tried[best_t][1], trace)


_INVERSE_PHI = (math.sqrt(5.0) - 1.0) / 2.0


def _grid(low: float, high: float, growth: float) -> Iterator[float]:
    """low·γ^k up to ``high``, ending at ``high`` itself: a coarse grid must not stop short of
    the largest allowed step (a model may only respond near it)."""
    t = low
    while t < high * (1 - 1e-12):
        yield t
        t *= growth
    yield high


def _golden_refine(
    visit: Callable[[float], float], best_t: float, best: float, growth: float, evaluations: int
) -> tuple[float, float]:
    """Golden-section search for the maximum on log t ∈ [log(best_t/γ), log(best_t·γ)], keeping
    the best point seen (the objective is piecewise constant, so the bracket only guides)."""
    lo, hi = math.log(best_t / growth), math.log(best_t * growth)
    inner, inner_value = math.log(best_t), best
    for _ in range(evaluations):
        # probe the larger side of the bracket at its golden point
        if hi - inner >= inner - lo:
            probe = inner + (1.0 - _INVERSE_PHI) * (hi - inner)
        else:
            probe = inner - (1.0 - _INVERSE_PHI) * (inner - lo)
        t = math.exp(probe)
        value = visit(t)
        if value > inner_value + 1e-12:
            lo, hi = (inner, hi) if probe > inner else (lo, inner)
            inner, inner_value = probe, value
        elif probe > inner:
            hi = probe
        else:
            lo = probe
        if value > best + 1e-12 or (abs(value - best) <= 1e-12 and t < best_t):
            best_t, best = t, value
    return best_t, best
