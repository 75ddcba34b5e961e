"""Inverse-Hessian implementations behind one interface (:class:`InverseHessian`).

:func:`inverse_for` picks the implementation a configuration's ``solver`` names. To add a
curvature model, write a subclass in a file of its own and add a builder to :data:`BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import SolveConfig
from ..errors import InvalidArgumentError
from ..hessian import HessianOperator
from ..solvers import ITERATIVE, LowRankHessian
from .base import InverseHessian, Solution
from .dense import DenseInverse
from .iterative import IterativeInverse
from .kfac import KroneckerInverse
from .lowrank import LowRankInverse

Builder = Callable[[HessianOperator, SolveConfig, "LowRankHessian | None"], InverseHessian]


def _iterative(hessian: HessianOperator, config: SolveConfig, _fit: LowRankHessian | None) -> InverseHessian:
    return IterativeInverse(
        hessian, config.damping, solver=config.solver_name, tol=config.tol, max_iter=config.max_iter,
        options=dict(config.solver_options),
    )  # fmt: skip


def _dense(hessian: HessianOperator, config: SolveConfig, _fit: LowRankHessian | None) -> InverseHessian:
    return DenseInverse(hessian, config.damping)


def _lowrank(hessian: HessianOperator, config: SolveConfig, fit: LowRankHessian | None) -> InverseHessian:
    steps = config.solver_options.get("steps")
    return LowRankInverse(
        hessian, config.damping, fit=fit, rank=config.rank, seed=config.seed,
        steps=None if steps is None else int(steps),
    )  # fmt: skip


def _kronecker(corrected: bool) -> Builder:
    def build(hessian: HessianOperator, config: SolveConfig, _fit: LowRankHessian | None) -> InverseHessian:
        return KroneckerInverse(
            hessian, config.damping, corrected=corrected, tol=config.tol, max_iter=config.max_iter
        )

    return build


#: solver name → how to build its inverse.
BUILDERS: dict[str, Builder] = {
    **dict.fromkeys(ITERATIVE, _iterative),
    "direct": _dense,
    "lowrank": _lowrank,
    "kfac": _kronecker(corrected=False),
    "ekfac": _kronecker(corrected=True),
}


def inverse_for(
    hessian: HessianOperator, config: SolveConfig, *, lowrank: LowRankHessian | None = None
) -> InverseHessian:
    """The inverse of ``hessian`` + ``config.damping`` that ``config.solver`` names; ``lowrank``
    is a previously fitted curvature (solver ``lowrank`` only)."""
    solver = config.solver_name
    if lowrank is not None and solver != "lowrank":
        raise InvalidArgumentError(f"a `lowrank` fit is only used with solver='lowrank', not {solver!r}")
    return BUILDERS[solver](hessian, config, lowrank)


__all__ = [
    "BUILDERS",
    "DenseInverse",
    "InverseHessian",
    "IterativeInverse",
    "KroneckerInverse",
    "LowRankInverse",
    "Solution",
    "inverse_for",
]
