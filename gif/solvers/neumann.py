"""The GIF paper's solver: a Neumann (LiSSA-style) series on the normal equations, faithful to the
official code (``hessians.iphvp``) as the slow baseline (~κ² iterations) the other solvers are
measured against (docs/method.md, "The paper's solver"):

    N = (AᵀA + λI) / c²,   b' = Aᵀb / c²,   x₀ = b',   x_{k+1} = b' + (I − N) x_k,

stopping on ‖x_{k+1} − x_k‖ ≤ tol·√n, and restarting from scratch with c += ``step`` when that
step grew since the previous even iteration. Symmetric problems use A' = A + λI.
"""

from __future__ import annotations

import math

from .base import MatVec, Monitor, Problem, SolveResult, safe_norm

MAX_RESTARTS = 100


def neumann(
    problem: Problem, *, tol: float, max_iter: int, monitor: Monitor, normalizer: float = 1.0,
    step: float = 0.5,
) -> SolveResult:  # fmt: skip
    """Run the paper's iteration; ``normalizer`` is the starting c, ``step`` its increment."""
    symmetric = problem.kind == "symmetric"
    normal: MatVec = (lambda x: problem.apply(problem.apply(x))) if symmetric else problem.apply
    rhs = problem.apply(problem.rhs) if symmetric else problem.rmatvec(problem.rhs)
    threshold = tol * math.sqrt(problem.size)
    c = normalizer
    total_iters = restarts = 0
    while True:
        x = b = rhs / c**2
        prev_even = math.inf
        for k in range(max_iter):
            x_new = b + x - normal(x) / c**2
            diff = safe_norm(x_new - x)
            x = x_new
            total_iters += 1
            monitor(total_iters, diff, max_iter)
            diverged = not math.isfinite(diff) or (k % 2 == 0 and diff > prev_even)
            if diverged or diff <= threshold:
                break
            if k % 2 == 0:
                prev_even = diff
        if not diverged or restarts >= MAX_RESTARTS:
            break
        restarts += 1
        c += step
    change = problem.apply(x) - problem.normal_rhs()
    residual = safe_norm(change) / max(safe_norm(problem.normal_rhs()), 1e-300)
    note = f"normalizer c={c:g} after {restarts} restart(s)"
    if diverged:
        note += "; still diverging at the restart cap"
    elif diff <= threshold:
        note += "; stopped by the paper's rule ‖Δx‖ ≤ tol·√n"
    # The paper's rule only says the steps got small; convergence is judged on the residual.
    return SolveResult(x, residual <= tol, total_iters, residual, monitor.history, "neumann", note)
