"""MINRES (Paige & Saunders 1975) for symmetric, possibly indefinite systems.

Minimises ‖b − (A + λI)x‖ over the Krylov space, one mat-vec per iteration, and does not need
positive definiteness, which is why it suits raw network Hessians. Least-squares problems are
run on their normal equations (AᵀA + λI)x = Aᵀb (two mat-vecs per iteration).
"""

from __future__ import annotations

import math

import torch

from .base import Monitor, Problem, SolveResult, safe_norm


def minres(problem: Problem, *, tol: float, max_iter: int, monitor: Monitor) -> SolveResult:
    """Solve ``problem.apply(x) = problem.normal_rhs()`` by MINRES from x = 0."""
    b = problem.normal_rhs()
    x = torch.zeros_like(b)
    beta1 = safe_norm(b)
    if beta1 == 0.0:
        return SolveResult(x, True, 0, 0.0, [], "minres")
    # Lanczos vectors r1, r2 and search directions w, w1, w2, as in the classical recurrence
    # (nothing is updated in place, so they start as b itself).
    r1 = r2 = y = b
    w = w2 = torch.zeros_like(b)
    oldb, beta, dbar, epsln, phibar = 0.0, beta1, 0.0, 0.0, beta1
    cs, sn = -1.0, 0.0
    for it in range(1, max_iter + 1):
        v = y / beta
        y = problem.apply(v)
        if it >= 2:
            y = y - (beta / oldb) * r1
        alpha = float(v @ y)
        y = y - (alpha / beta) * r2
        r1, r2 = r2, y
        oldb, beta = beta, safe_norm(y)
        oldeps = epsln
        delta = cs * dbar + sn * alpha
        gbar = sn * dbar - cs * alpha
        epsln = sn * beta
        dbar = -cs * beta
        gamma = max(math.hypot(gbar, beta), torch.finfo(b.dtype).tiny)
        cs, sn = gbar / gamma, beta / gamma
        phi = cs * phibar
        phibar = sn * phibar
        w1, w2 = w2, w
        w = (v - oldeps * w1 - delta * w2) / gamma
        x = x + phi * w
        rel = phibar / beta1
        monitor(it, rel, max_iter)
        if rel <= tol or beta == 0.0:
            break
    return SolveResult(x, rel <= tol or beta == 0.0, it, rel, monitor.history, "minres")
