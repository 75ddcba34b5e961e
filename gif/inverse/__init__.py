"""Inverse-Hessian implementations behind one interface (:class:`InverseHessian`).

:func:`inverse_for` picks the implementation a configuration's ``solver`` names. To add a
curvature model, write a subclass in a file of its own and add a builder to :data:`BUILDERS`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import FITTED_SOLVERS, SOLVE_SOLVER, SolveConfig
from ..errors import InvalidArgumentError
from ..hessian import HessianOperator
from ..solvers import ITERATIVE, LowRankHessian
from .base import InverseHessian, Solution
from .choice import choose_scores_solver, choose_solver
from .dense import DenseInverse
from .iterative import IterativeInverse
from .kfac import KroneckerFit, KroneckerInverse
from .lowrank import LowRankInverse

#: A fitted curvature that later solves reuse: the Lanczos eigenpairs (``lowrank``) or the
#: Kronecker factors (``kfac`` / ``ekfac``).
CurvatureFit = LowRankHessian | KroneckerFit

Builder = Callable[[HessianOperator, SolveConfig, "CurvatureFit | None"], InverseHessian]


def _iterative(hessian: HessianOperator, config: SolveConfig, _fit: CurvatureFit | None) -> InverseHessian:
    return IterativeInverse(
        hessian, config.damping, solver=config.solver_name, tol=config.tol, max_iter=config.max_iter,
        options=dict(config.solver_options),
    )  # fmt: skip


def _dense(hessian: HessianOperator, config: SolveConfig, _fit: CurvatureFit | None) -> InverseHessian:
    return DenseInverse(hessian, config.damping)


def _lowrank(hessian: HessianOperator, config: SolveConfig, fit: CurvatureFit | None) -> InverseHessian:
    if fit is not None and not isinstance(fit, LowRankHessian):
        raise InvalidArgumentError("solver 'lowrank' needs a LowRankHessian fit")
    steps = config.solver_options.get("steps")
    return LowRankInverse(
        hessian, config.damping, fit=fit, rank=config.rank, seed=config.seed,
        steps=None if steps is None else int(steps),
    )  # fmt: skip


def _kronecker(hessian: HessianOperator, config: SolveConfig, fit: CurvatureFit | None) -> InverseHessian:
    if fit is not None and not isinstance(fit, KroneckerFit):
        raise InvalidArgumentError(f"solver {config.solver_name!r} needs a KroneckerFit")
    return KroneckerInverse(
        hessian, config.damping, corrected=config.solver_name == "ekfac", tol=config.tol,
        max_iter=config.max_iter, fit=fit, layer_damping=config.layer_damping,
    )  # fmt: skip


#: solver name → how to build its inverse.
BUILDERS: dict[str, Builder] = {
    **dict.fromkeys(ITERATIVE, _iterative),
    "direct": _dense,
    "lowrank": _lowrank,
    **dict.fromkeys(("kfac", "ekfac"), _kronecker),
}


def inverse_for(
    hessian: HessianOperator, config: SolveConfig, *, fit: CurvatureFit | None = None
) -> InverseHessian:
    """The inverse of ``hessian`` + ``config.damping`` that ``config.solver`` names (``auto``:
    :func:`choose_solver`, falling back on the method's solver); ``fit`` is a previously fitted
    curvature of that solver (:data:`FITTED_SOLVERS`), used instead of fitting."""
    config, _ = choose_solver(config, hessian.flat.model, hessian.flat.loss_fn, SOLVE_SOLVER[config.method])
    solver = config.solver_name
    if fit is not None and solver not in FITTED_SOLVERS:
        raise InvalidArgumentError(
            f"a curvature fit is only used with solver={' / '.join(FITTED_SOLVERS)}, not {solver!r}"
        )
    if isinstance(fit, LowRankHessian) and solver != "lowrank":
        raise InvalidArgumentError(f"a `lowrank` fit is only used with solver='lowrank', not {solver!r}")
    return BUILDERS[solver](hessian, config, fit)


__all__ = [
    "BUILDERS", "FITTED_SOLVERS", "CurvatureFit", "DenseInverse", "InverseHessian", "IterativeInverse",
    "KroneckerFit", "KroneckerInverse", "LowRankInverse", "Solution", "choose_scores_solver", "choose_solver",
    "inverse_for",
]  # fmt: skip
