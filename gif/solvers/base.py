"""Linear problems, solver results and the per-iteration monitor shared by every solver.

Two problem kinds cover every influence variant:

* ``symmetric``:  (A + λI) x = b, with A symmetric (possibly indefinite), e.g. A = H or H[T,T];
* ``lstsq``:      min_x ‖A x − b‖² + λ‖x‖², i.e. (AᵀA + λI) x = Aᵀ b, e.g. A = H[:,T] (GIF).

Solvers only see mat-vec callables, so the same code runs on any device and dtype.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from ..errors import Cancelled
from ..progress import Progress, ProgressCallback, Stage, StopCheck

MatVec = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Problem:
    """A linear problem given matrix-free.

    Attributes:
        kind: ``"symmetric"`` or ``"lstsq"`` (see module docstring).
        matvec: x ↦ A x.
        rmatvec: y ↦ Aᵀ y (for ``symmetric`` problems, the same as ``matvec``).
        rhs: b.
        damping: λ ≥ 0.
        size: length of x.
        accuracy: relative accuracy ε of A's data (0: exact). A least-squares solve may stop once
            x solves exactly a problem whose matrix is within ε of A (docs/method.md, "When an
            undamped least-squares solve stops").
    """

    kind: Literal["symmetric", "lstsq"]
    matvec: MatVec
    rmatvec: MatVec
    rhs: torch.Tensor
    damping: float
    size: int
    accuracy: float = 0.0

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """The damped system operator: (A + λI) x, or (AᵀA + λI) x for least squares."""
        if self.kind == "symmetric":
            return self.matvec(x) + self.damping * x
        return self.rmatvec(self.matvec(x)) + self.damping * x

    def normal_rhs(self) -> torch.Tensor:
        """The right-hand side of :meth:`apply`'s system: b, or Aᵀ b."""
        return self.rhs if self.kind == "symmetric" else self.rmatvec(self.rhs)


@dataclass
class SolveResult:
    """What every solver returns.

    ``residual`` is relative and solver-independent: ‖b − (A + λI)x‖/‖b‖ for symmetric
    problems and the normal-equation residual ‖Aᵀ(b − Ax) − λx‖/‖Aᵀb‖ for least squares (the
    quantity that is zero at the solution). ``converged`` is True only if it fell below ``tol``,
    or, for a least-squares problem with an ``accuracy``, if x solves a problem within that accuracy
    of the given one (then ``note`` says so).
    """

    x: torch.Tensor
    converged: bool
    iterations: int
    residual: float
    history: list[float] = field(default_factory=list)
    solver: str = ""
    note: str = ""


class Monitor:
    """Called once per solver iteration: records the residual, reports progress, honours cancel.

    Args:
        callback: receives a :class:`gif.progress.Progress` (``stage``, ``iteration``,
            ``max_iter``, ``residual`` and the ``context`` fields) every iteration.
        should_stop: polled every iteration; when it returns True, :class:`Cancelled` is raised.
        stage: the events' stage.
        context: further :class:`Progress` fields, e.g. ``{"query": 3, "num_queries": 20}``.
    """

    def __init__(
        self, callback: ProgressCallback | None = None, should_stop: StopCheck | None = None, *,
        stage: Stage = "solving", context: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.callback = callback
        self.should_stop = should_stop
        self.stage: Stage = stage
        self.context = dict(context or {})
        self.history: list[float] = []

    def fresh(self, *, stage: Stage | None = None, context: dict[str, Any] | None = None) -> Monitor:
        """A monitor with the same callback and stop check, an empty history, and another stage
        or more context."""
        merged = {**self.context, **(context or {})}
        return Monitor(self.callback, self.should_stop, stage=stage or self.stage, context=merged)

    def __call__(self, iteration: int, residual: float, max_iter: int) -> None:
        self.history.append(float(residual))
        if self.callback is not None:
            event = Progress(
                self.stage, iteration=iteration, max_iter=max_iter, residual=float(residual), **self.context
            )
            self.callback(event)
        self.check_cancel()

    def check_cancel(self) -> None:
        if self.should_stop is not None and self.should_stop():
            raise Cancelled("cancelled by the caller")


def safe_norm(t: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(t))
