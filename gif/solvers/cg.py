"""Conjugate gradients: CG for (A + λI)x = b and CGLS for min ‖Ax − b‖² + λ‖x‖².

CG needs a positive-definite system. Trained networks have indefinite Hessians (the GIF paper,
Fig. 3), so when a direction of non-positive curvature pᵀ(A + λI)p ≤ 0 shows up, CG stops and
reports it (``converged=False``) with the iterate so far — a truncated-Newton direction; if that
happens at the very first step, the steepest-descent step along b is returned instead of 0.
Use ``minres`` or more damping for an actual solution of an indefinite system.
CGLS is CG on the normal equations, written so it never forms AᵀA: two mat-vecs per
iteration (one with A, one with Aᵀ) and convergence in ~κ(A) steps, not κ(A)² as with the
paper's Neumann series on the same equations.
"""

from __future__ import annotations

import torch

from .base import Monitor, Problem, SolveResult, safe_norm


def cg(problem: Problem, *, tol: float, max_iter: int, monitor: Monitor) -> SolveResult:
    """Solve ``problem`` with CG (symmetric) or CGLS (least squares), starting from x = 0."""
    if problem.kind == "lstsq":
        return _cgls(problem, tol=tol, max_iter=max_iter, monitor=monitor)
    b = problem.rhs
    x = torch.zeros_like(b)
    bnorm = safe_norm(b)
    if bnorm == 0.0:
        return SolveResult(x, True, 0, 0.0, [], "cg")
    r, p = b.clone(), b.clone()
    gamma = float(r @ r)
    note = ""
    converged = False
    for it in range(1, max_iter + 1):
        q = problem.apply(p)
        curvature = float(p @ q)
        if curvature <= 0.0:
            note = "stopped on non-positive curvature (indefinite system): use minres or more damping"
            if it == 1:  # x would still be 0: the steepest-descent step instead (module docstring)
                x = (gamma / max(abs(curvature), torch.finfo(b.dtype).tiny)) * p
                r = b - problem.apply(x)
            it -= 1
            break
        alpha = gamma / curvature
        x += alpha * p
        r -= alpha * q
        gamma_new = float(r @ r)
        rel = gamma_new**0.5 / bnorm
        monitor(it, rel, max_iter)
        if rel <= tol:
            converged = True
            break
        p = r + (gamma_new / gamma) * p
        gamma = gamma_new
    return SolveResult(x, converged, it, float(r.norm()) / bnorm, monitor.history, "cg", note)


def _cgls(problem: Problem, *, tol: float, max_iter: int, monitor: Monitor) -> SolveResult:
    lam = problem.damping
    x = torch.zeros(problem.size, dtype=problem.rhs.dtype, device=problem.rhs.device)
    r = problem.rhs.clone()  # b − A x
    s = problem.rmatvec(r)  # Aᵀ r − λ x
    snorm0 = safe_norm(s)
    if snorm0 == 0.0:
        return SolveResult(x, True, 0, 0.0, [], "cg")
    p = s.clone()
    gamma = float(s @ s)
    converged = False
    for it in range(1, max_iter + 1):
        q = problem.matvec(p)
        delta = float(q @ q) + lam * float(p @ p)
        if delta <= 0.0:
            it -= 1
            break
        alpha = gamma / delta
        x += alpha * p
        r -= alpha * q
        s = problem.rmatvec(r) - lam * x
        gamma_new = float(s @ s)
        rel = gamma_new**0.5 / snorm0
        monitor(it, rel, max_iter)
        if rel <= tol:
            converged = True
            break
        p = s + (gamma_new / gamma) * p
        gamma = gamma_new
    return SolveResult(x, converged, it, gamma_new**0.5 / snorm0 if it else 1.0, monitor.history, "cg")
