"""Step policies: how far to move along an influence update.

An influence update d is a Newton step on the edited objective. On a trained network the
quadratic model behind it is only trusted near θ, and applying d at full scale usually wrecks
the model (docs/benchmarks.md). Two policies:

* ``newton`` — θ_T ← θ_T + d (the theory's answer).
* ``search`` — θ_T ← θ_T + t·d for the t that maximises a validation objective. The paper walks
  with fixed-norm increments and keeps the best F1 measured on *test* data (docs/method.md,
  "Step chosen on test data"); here t runs over a geometric grid t₀·γ^k between bounds the
  caller sets (edits use relative step norms ‖t·d‖/‖θ_T‖ ∈ [1e-5, 1], so it does not matter
  whether the solver stopped early and returned a short d), stops after ``patience``
  non-improving steps, then refines between the best point's neighbours. Only validation data
  and the edited samples themselves are ever evaluated.
"""

from __future__ import annotations

import math
from collections.abc import Callable
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
    """Maximise ``objective(t)`` over t ∈ {0} ∪ geometric grid, then refine around the best.

    Ties go to the smaller step (the smaller change to the model).
    """
    tried: dict[float, tuple[float, dict]] = {}

    def visit(t: float) -> float:
        if should_stop is not None and should_stop():
            raise Cancelled("cancelled by the caller during the step search")
        if t not in tried:
            tried[t] = objective(t)
        return tried[t][0]

    best_t, best = 0.0, visit(0.0)
    misses = 0
    t = min_scale
    while t <= max_scale * (1 + 1e-12):
        value = visit(t)
        if value > best + 1e-12:
            best_t, best, misses = t, value, 0
        else:
            misses += 1
            if misses >= patience and best_t > 0.0:
                break
        t *= growth
    if best_t > 0.0:
        lo, hi = math.log(best_t / growth), math.log(best_t * growth)
        for k in range(1, refine + 1):
            t = math.exp(lo + (hi - lo) * k / (refine + 1))
            value = visit(t)
            if value > best + 1e-12 or (abs(value - best) <= 1e-12 and t < best_t):
                best_t, best = t, value
    trace = [{"scale": t, "objective": v} for t, (v, _) in sorted(tried.items())]
    return StepOutcome("search", best_t, best, tried[best_t][1], trace)
