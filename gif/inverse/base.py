"""The inverse-Hessian interface every influence method and score is written against
(docs/engine.md, "The inverse-Hessian interface").

For one curvature H (the Hessian of a mean loss, or a model of it) and damping λ ≥ 0 an
:class:`InverseHessian` applies the three inverses of docs/method.md (``solve``,
``solve_restricted``, ``least_squares``) and, for many right-hand sides at once (scores,
self-influence), ``solve_rows``, ``quadratic`` and ``bilinear``, which structured inverses
vectorise. :meth:`~InverseHessian.prepare` does the once-per-curvature work (a Lanczos fit, a
dense factorisation); it is idempotent and called by every solve that needs it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields

import torch

from ..errors import NumericalError
from ..hessian import HessianOperator
from ..solvers import MatVec, Monitor, Problem, SolveResult


@dataclass
class Solution:
    """One application of an inverse, with the solve's diagnostics.

    ``residual`` is relative (see :class:`gif.solvers.SolveResult`); structured inverses that
    are exact for their model report their own accuracy measure (``lowrank``: the fit's largest
    Ritz residual; ``direct``: 0). ``iterations`` counts solver iterations (``lowrank``: the
    fit's HVPs, on the solve that triggered the fit).
    """

    x: torch.Tensor
    converged: bool = True
    iterations: int = 0
    residual: float = 0.0
    history: list[float] = field(default_factory=list)
    note: str = ""

    @classmethod
    def of(cls, result: SolveResult) -> Solution:
        """An iterative solver's result as a solution (the fields they share)."""
        return cls(**{f.name: getattr(result, f.name) for f in fields(cls)})


class InverseHessian(ABC):
    """(H + λI)⁻¹ and its restricted and least-squares variants, for one H and one λ."""

    #: The ``solver`` name this implementation answers to.
    name: str = ""

    def __init__(self, hessian: HessianOperator, damping: float) -> None:
        self.hessian = hessian
        self.damping = float(damping)

    @property
    def size(self) -> int:
        return self.hessian.size

    def prepare(self, monitor: Monitor | None = None) -> None:  # noqa: B027 (optional hook)
        """Do the once-per-curvature work (idempotent); nothing for matrix-free inverses."""

    @abstractmethod
    def solve(self, b: torch.Tensor, monitor: Monitor) -> Solution:
        """x = (H + λI)⁻¹ b, b of length p."""

    @abstractmethod
    def solve_restricted(self, b_t: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        """x = (H[T,T] + λI)⁻¹ b_T with T = ``index``."""

    @abstractmethod
    def least_squares(self, g: torch.Tensor, index: torch.Tensor, monitor: Monitor) -> Solution:
        """x = argmin ‖H[:,T] x − g‖² + λ‖x‖² with T = ``index``."""

    def solve_rows(
        self, rows: torch.Tensor, monitor: Monitor, *, name: str = "query", offset: int = 0,
        total: int | None = None,
    ) -> tuple[torch.Tensor, list[Solution]]:  # fmt: skip
        """Each row b of ``rows`` [m, p] ↦ (H + λI)⁻¹ b, with one :class:`Solution` per row (its
        ``x`` left empty). Row j's progress events carry ``name`` (``query`` | ``sample``) =
        ``offset + j`` and its count ``total`` (default m)."""
        count = {"query": "num_queries", "sample": "num_samples"}[name]
        total = int(rows.shape[0]) if total is None else total
        out = torch.empty_like(rows)
        solutions = []
        for j in range(int(rows.shape[0])):
            solution = self.solve(rows[j], monitor.fresh(context={name: offset + j, count: total}))
            out[j] = solution.x
            solution.x = solution.x[:0]
            solutions.append(solution)
        return finite_rows(out, self.name), solutions

    def quadratic(
        self, rows: torch.Tensor, monitor: Monitor, *, offset: int = 0, total: int | None = None
    ) -> tuple[torch.Tensor, list[Solution]]:
        """Row-wise bᵀ (H + λI)⁻¹ b for ``rows`` [m, p] (self-influence), shape [m]."""
        return self.bilinear(rows, rows, monitor, offset=offset, total=total)

    def bilinear(
        self, left: torch.Tensor, right: torch.Tensor, monitor: Monitor, *, offset: int = 0,
        total: int | None = None,
    ) -> tuple[torch.Tensor, list[Solution]]:  # fmt: skip
        """Row-wise aᵀ (H + λI)⁻¹ b for rows a of ``left`` and b of ``right`` (both [m, p]), shape
        [m]: one solve per row of ``right``."""
        solved, solutions = self.solve_rows(right, monitor, name="sample", offset=offset, total=total)
        return (left * solved).sum(dim=1), solutions


def scatter(x_t: torch.Tensor, index: torch.Tensor, size: int) -> torch.Tensor:
    """A vector of length ``size`` holding ``x_t`` at ``index`` and zeros elsewhere."""
    full = torch.zeros(size, dtype=x_t.dtype, device=x_t.device)
    full[index] = x_t
    return full


def restricted_problem(
    matvec: MatVec, b_t: torch.Tensor, index: torch.Tensor, size: int, damping: float
) -> Problem:
    """(A[T,T] + λI) x = b_T for a symmetric A given as ``matvec`` over all ``size`` coordinates."""

    def restricted(x_t: torch.Tensor) -> torch.Tensor:
        return matvec(scatter(x_t, index, size))[index]

    return Problem("symmetric", restricted, restricted, b_t, damping, index.numel())


def columns_problem(
    matvec: MatVec, g: torch.Tensor, index: torch.Tensor, damping: float, *, accuracy: float = 0.0
) -> Problem:
    """min ‖A[:,T] x − g‖² + λ‖x‖² for a symmetric A given as ``matvec``: A[:,T] x = A scatter_T(x)
    and A[:,T]ᵀ y = (A y)[T], since A = Aᵀ. ``accuracy``: see :class:`gif.solvers.Problem`."""
    return Problem(
        "lstsq", lambda x_t: matvec(scatter(x_t, index, g.numel())), lambda y: matvec(y)[index], g, damping,
        index.numel(), accuracy,
    )  # fmt: skip


def sampling_accuracy(samples: int, damping: float) -> float:
    """The relative accuracy of a Hessian averaged over ``samples`` samples, 1/√m (the Monte-Carlo
    error of a mean), as the stopping accuracy of an undamped least-squares solve; 0 for a damped
    one, which is well posed (docs/method.md, "When an undamped least-squares solve stops")."""
    return 1.0 / math.sqrt(samples) if damping == 0.0 and samples > 0 else 0.0


def finite_rows(x: torch.Tensor, solver: str) -> torch.Tensor:
    """``x``, unless a solve left NaN or Inf in it (then a :class:`NumericalError`)."""
    if not bool(torch.isfinite(x).all()):
        raise NumericalError(f"the {solver} solve produced NaN/Inf; add damping or use another solver")
    return x
