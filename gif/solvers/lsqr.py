"""LSQR (Paige & Saunders 1982): min ‖Ax − b‖² + λ‖x‖² by Golub–Kahan bidiagonalisation.

Mathematically equivalent to CGLS, numerically more stable on ill-conditioned A. Two mat-vecs
per iteration (A and Aᵀ). Damping enters as ``damp = √λ``. Symmetric problems are solved as
the square least-squares problem with A' = A + λI and no extra damping.
"""

from __future__ import annotations

import math

import torch

from .base import Monitor, Problem, SolveResult, safe_norm


def lsqr(problem: Problem, *, tol: float, max_iter: int, monitor: Monitor) -> SolveResult:
    """Solve ``problem`` with LSQR from x = 0.

    Stops on the residual of the problem's contract (see :class:`SolveResult`): ‖b − A'x‖/‖b‖
    for symmetric problems, the normal-equation residual for least squares. A least-squares
    problem with an ``accuracy`` ε also stops on Paige & Saunders' test for inconsistent systems,

        ‖Āᵀ r̄‖ / (‖Ā‖_F ‖r̄‖) ≤ ε,

    which says that x is the exact least-squares solution of a matrix within relative distance ≈ ε
    of Ā (a backward error), so solving further only fits the noise in A's data.
    """
    symmetric = problem.kind == "symmetric"
    matvec, rmatvec = (problem.apply, problem.apply) if symmetric else (problem.matvec, problem.rmatvec)
    damp = 0.0 if symmetric else math.sqrt(problem.damping)
    b = problem.rhs
    x = torch.zeros(problem.size, dtype=b.dtype, device=b.device)
    bnorm = beta = safe_norm(b)
    if beta == 0.0:
        return SolveResult(x, True, 0, 0.0, [], "lsqr")
    u = b / beta
    v = rmatvec(u)
    alpha = safe_norm(v)
    if alpha == 0.0:
        return SolveResult(x, True, 0, 0.0, [], "lsqr")
    v /= alpha
    arnorm0 = alpha * beta  # ‖Aᵀb‖
    w = v.clone()
    phibar, rhobar = beta, alpha
    # ‖Ā‖_F² and ‖D‖_F² estimates (D = the search directions / ρ): cond(Ā)
    anorm2 = ddnorm = damped_residual2 = 0.0
    note = ""
    for it in range(1, max_iter + 1):
        u = matvec(v) - alpha * u
        beta = safe_norm(u)
        if beta > 0.0:
            u /= beta
        v = rmatvec(u) - beta * v
        alpha = safe_norm(v)
        if alpha > 0.0:
            v /= alpha
        # Rotate out the damping row, then the subdiagonal β.
        rhobar1 = math.hypot(rhobar, damp)
        cs1 = rhobar / rhobar1
        damped_residual2 += (damp / rhobar1 * phibar) ** 2  # the damping rows' part of ‖r̄‖²
        phibar = cs1 * phibar
        rho = math.hypot(rhobar1, beta)
        anorm2 += alpha**2 + beta**2 + damp**2
        ddnorm += (safe_norm(w) / rho) ** 2
        cs, sn = rhobar1 / rho, beta / rho
        theta = sn * alpha
        rhobar = -cs * alpha
        phi = cs * phibar
        phibar = sn * phibar
        x = x + (phi / rho) * w
        w = v - (theta / rho) * w
        # the contract's residual: ‖b − A'x‖ (no damping row) for a symmetric problem, else the
        # estimate of ‖Aᵀr − λx‖ (Paige & Saunders, §5.1)
        rel = abs(phibar) / bnorm if symmetric else alpha * abs(sn * phi) / arnorm0
        monitor(it, rel, max_iter)
        if rel <= tol or alpha == 0.0:
            break
        if not symmetric and problem.accuracy > 0.0:
            r_bar = math.sqrt(phibar**2 + damped_residual2)
            backward = alpha * abs(sn * phi) / (math.sqrt(anorm2) * r_bar + 1e-300)
            if backward <= problem.accuracy:
                note = (
                    "stopped at the accuracy of the data: x is the least-squares solution of a matrix "
                    f"within {problem.accuracy:.2g} (relative) of the sampled one"
                )
                break
    converged = rel <= tol or alpha == 0.0 or bool(note)  # bool(note): stopped at the data's accuracy
    if not converged and not symmetric and problem.damping == 0.0:
        note = ill_posed_note(math.sqrt(anorm2 * ddnorm), float(x.norm()))
    return SolveResult(x, converged, it, rel, monitor.history, "lsqr", note)


def ill_posed_note(condition: float, x_norm: float) -> str:
    """Why an undamped least-squares solve ran out of iterations: a nearly rank-deficient H[:,T]
    puts the optimum far out along directions of tiny curvature, so ‖x‖ and the condition estimate
    cond(Ā) = ‖Ā‖_F ‖D‖_F climb (docs/method.md, "When an undamped least-squares solve stops")."""
    return (
        f"the undamped least-squares problem is ill-conditioned (condition estimate {condition:.1e}, "
        f"‖x‖ = {x_norm:.3g} at the iteration cap): set damping > 0 (edits use 0.01)"
    )
