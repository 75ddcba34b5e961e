"""Size a job before it computes: the engine's estimate against the worker's memory budget.

A job whose estimate (gif/memory.py: parameters and solver vectors, a low-rank fit's Lanczos
basis included; one chunk being differentiated, or the HVPs' cached graphs where they are taken;
the data held) exceeds ``GIF_MAX_MEMORY_BYTES`` fails at once with ``memory_budget_exceeded`` and
a message naming what to change, instead of being killed by the operating system's OOM killer
half-way.
"""

from __future__ import annotations

from typing import Any

import gif.memory
from gif.config import SOLVE_SOLVER, SolveConfig
from gif.hessian import cross_entropy
from gif.inverse import choose_scores_solver
from gif.method_choice import most_hessian_samples
from jobs.specs import ScoresJob, SelfInfluenceJob, Spec

from .execute import edit_config, measure_of, scores_config, self_influence_config
from .loading import Loaded


def check_job_fits(spec: Spec, loaded: Loaded, budget: int) -> dict[str, Any]:
    """The job's estimate (for its provenance); raises :class:`gif.errors.MemoryBudgetError`
    when it exceeds ``budget`` bytes (0: no check)."""
    inputs, labels = loaded.train
    n = int(labels.shape[0])
    p = sum(t.numel() for t in loaded.model.parameters() if t.requires_grad)
    solve: SolveConfig
    if isinstance(spec, ScoresJob):
        solve = scores_config(spec)  # solver auto resolved as gif.scores resolves it
        solve, _ = choose_scores_solver(
            solve, loaded.model, loaded.loss_fn or cross_entropy, SOLVE_SOLVER[solve.method]
        )
        samples, vectors, backend = n, gif.memory.solver_vectors(solve, p), gif.memory.solver_backend(solve)
    elif isinstance(spec, SelfInfluenceJob):
        solve = self_influence_config(spec)
        samples = n
        if measure_of(spec, loaded) == "head":  # the leave-one-out head: no curvature fit, no HVP
            vectors, backend = gif.memory.EDIT_VECTORS, "func"
        else:
            vectors, backend = gif.memory.solver_vectors(solve, p), gif.memory.solver_backend(solve)
    else:
        solve = edit_config(spec)
        samples = min(n, most_hessian_samples(solve, spec.type))
        vectors, backend = gif.memory.solver_vectors(solve, p), gif.memory.solver_backend(solve)
    estimate = gif.memory.estimate(
        loaded.model, inputs, samples, chunk_size=solve.chunk_size, memory_budget=solve.memory_budget,
        vectors=vectors, hvp_backend=backend,
    )  # fmt: skip
    if budget > 0:
        gif.memory.check_fits(estimate, budget)
    return estimate.as_dict()
