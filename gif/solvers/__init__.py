"""Solvers for the linear systems behind every influence variant (docs/engine.md, "Solvers"): the
matrix-free ones of :data:`ITERATIVE`, and the structured ``direct`` and ``lowrank``."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import InvalidArgumentError
from .base import MatVec, Monitor, Problem, SolveResult
from .cg import cg
from .lowrank import LowRankHessian, fit_lowrank
from .lsqr import lsqr
from .minres import minres
from .neumann import neumann

ITERATIVE: dict[str, Callable[..., SolveResult]] = {
    "cg": cg,
    "minres": minres,
    "lsqr": lsqr,
    "neumann": neumann,
}
SOLVERS = (*ITERATIVE, "direct", "lowrank")


def solve(
    problem: Problem, solver: str, *, tol: float, max_iter: int, monitor: Monitor, **options: float
) -> SolveResult:
    """Run one of the iterative solvers on ``problem``."""
    if solver not in ITERATIVE:
        raise InvalidArgumentError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    if tol <= 0 or max_iter < 1:
        raise InvalidArgumentError(f"need tol > 0 and max_iter >= 1, got tol={tol}, max_iter={max_iter}")
    return ITERATIVE[solver](problem, tol=tol, max_iter=max_iter, monitor=monitor, **options)


__all__ = ["SOLVERS", "LowRankHessian", "MatVec", "Monitor", "Problem", "SolveResult", "fit_lowrank", "solve"]
