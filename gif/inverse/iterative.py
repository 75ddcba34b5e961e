"""Matrix-free inverses: each application is a Krylov solve on HVPs (``cg``, ``minres``, ``lsqr``,
``neumann``; the systems are :mod:`.base`'s problems with A = H), so any model size works and
nothing is prepared."""

from __future__ import annotations

import torch

from ..hessian import HessianOperator
from ..solvers import Monitor, Problem, solve
from .base import InverseHessian, Solution, columns_problem, restricted_problem, sampling_accuracy


class IterativeInverse(InverseHessian):
    def __init__(
        self, hessian: HessianOperator, damping: float, *, solver: str, tol: float, max_iter: int,
        options: dict[str, float] | None = None,
    ) -> None:  # fmt: skip
        super().__init__(hessian, damping)
        self.name, self.tol, self.max_iter = solver, tol, max_iter
        self.options = dict(options or {})

    def solve(self, b: torch.Tensor, monitor: Monitor) -> Solution:
        h = self.hessian.hvp
        return self._run(Problem("symmetric", h, h, b, self.damping, b.numel()), monitor)

    def solve_restricted(self, b_t: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        return self._run(restricted_problem(self.hessian.hvp, b_t, index, self.size, self.damping), monitor)

    def least_squares(self, g: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        accuracy = sampling_accuracy(self.hessian.data.total, self.damping)
        return self._run(
            columns_problem(self.hessian.hvp, g, index, self.damping, accuracy=accuracy), monitor
        )

    def _run(self, problem: Problem, monitor: Monitor) -> Solution:
        out = solve(problem, self.name, tol=self.tol, max_iter=self.max_iter, monitor=monitor, **self.options)
        return Solution.of(out)
