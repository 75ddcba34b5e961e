"""The inverse-Hessian interface, implementation by implementation, against dense float64 algebra.

Every implementation must give the same three systems and the same row operations (many
right-hand sides, quadratic forms) as a pseudo-inverse of the explicit Hessian.
"""

from __future__ import annotations

import pytest
import torch

from gif.config import SolveConfig
from gif.hessian import HessianOperator
from gif.inverse import BUILDERS, DenseInverse, IterativeInverse, LowRankInverse, inverse_for
from gif.solvers import Monitor

from .reference import dense_hessian

DAMPING = 0.3


def _data(tiny):
    _, model, hdata, _ = tiny
    x = hdata[0].double() if hdata[0].is_floating_point() else hdata[0]
    return model.double(), (x, hdata[1])


def _inverse(tiny, solver: str, damping: float = DAMPING):
    model, data = _data(tiny)
    hessian = HessianOperator(model, data)
    config = SolveConfig(
        method="if", damping=damping, solver=solver, tol=1e-12, max_iter=3000, rank=hessian.size
    )
    return hessian, inverse_for(hessian, config)


def _reference(tiny):
    """H, a damping that makes H + λI and every H[T,T] + λI positive definite (so that CG
    applies), and the pseudo-inverse of H + λI."""
    model, data = _data(tiny)
    h = dense_hessian(model, *data)
    damping = max(DAMPING, -float(torch.linalg.eigvalsh(h).min()) + DAMPING)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    return h, damping, torch.linalg.pinv(h + damping * eye)


@pytest.mark.parametrize("solver", ["minres", "cg", "lsqr", "direct", "lowrank"])
def test_every_inverse_solves_all_three_systems_and_the_row_operations(tiny, solver):
    h, damping, pinv = _reference(tiny)
    _, inverse = _inverse(tiny, solver, damping)
    p = h.shape[0]
    gen = torch.Generator().manual_seed(0)
    rows = torch.randn(3, p, generator=gen, dtype=torch.float64).to(h.device)
    index = torch.arange(0, p, 2, device=h.device)
    monitor = Monitor()

    def close(actual, expected):
        err = float(torch.linalg.norm(actual - expected) / torch.linalg.norm(expected))
        assert err <= 1e-6, f"{solver}: relative error {err:.2e}"

    close(inverse.solve(rows[0], monitor).x, pinv @ rows[0])
    sub = h[index][:, index] + damping * torch.eye(len(index), dtype=h.dtype, device=h.device)
    close(inverse.solve_restricted(rows[0][index], index, monitor).x, torch.linalg.solve(sub, rows[0][index]))
    a = h[:, index]
    normal = a.T @ a + damping * torch.eye(len(index), dtype=h.dtype, device=h.device)
    close(inverse.least_squares(rows[0], index, monitor).x, torch.linalg.solve(normal, a.T @ rows[0]))
    solved, solutions = inverse.solve_rows(rows, monitor)
    close(solved, rows @ pinv)
    assert len(solutions) == 3 and all(s.converged for s in solutions)
    values, _ = inverse.quadratic(rows, monitor)
    close(values, ((rows @ pinv) * rows).sum(dim=1))


def test_every_solver_name_has_an_implementation():
    assert set(BUILDERS) == {"cg", "minres", "lsqr", "neumann", "direct", "lowrank", "kfac", "ekfac"}
    assert BUILDERS["direct"].__name__ == "_dense" and BUILDERS["lowrank"].__name__ == "_lowrank"


def test_prepare_happens_once_and_a_given_fit_is_not_refitted(tiny):
    hessian, inverse = _inverse(tiny, "lowrank")
    assert isinstance(inverse, LowRankInverse)
    inverse.prepare()
    spent = hessian.hvps
    assert spent > 0
    inverse.prepare()
    inverse.solve(torch.ones(hessian.size, dtype=torch.float64, device=hessian.flat.device), Monitor())
    assert hessian.hvps == spent
    again = inverse_for(hessian, SolveConfig(solver="lowrank", damping=DAMPING), fit=inverse.fit)
    again.solve(torch.ones(hessian.size, dtype=torch.float64, device=hessian.flat.device), Monitor())
    assert hessian.hvps == spent
    dense = inverse_for(hessian, SolveConfig(solver="direct", damping=DAMPING))
    assert isinstance(dense, DenseInverse)
    dense.prepare()
    assert hessian.hvps == spent + hessian.size
    assert isinstance(inverse_for(hessian, SolveConfig(solver="minres")), IterativeInverse)


@pytest.mark.parametrize("solver", ["direct", "lowrank", "minres"])
def test_every_form_honours_a_cancel_before_it_computes(tiny, solver):
    """solve_rows, quadratic and bilinear each check for cancellation first, whatever the
    inverse (the dense one forms H + λI once, then answers every chunk from it)."""
    from gif.errors import Cancelled

    hessian, inverse = _inverse(tiny, solver)
    inverse.prepare()
    rows = torch.randn(3, hessian.size, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    stop = Monitor(should_stop=lambda: True)
    for form in (
        lambda: inverse.solve_rows(rows, stop),
        lambda: inverse.quadratic(rows, stop),
        lambda: inverse.bilinear(rows, rows.flip(0), stop),
    ):
        with pytest.raises(Cancelled):
            form()
    inverse.bilinear(rows, rows.flip(0), Monitor())  # without a cancel it answers
