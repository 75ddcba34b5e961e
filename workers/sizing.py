"""Size a job before it computes: the engine's estimate against the worker's memory budget.

A job whose estimate (gif/memory.py: parameters and solver vectors, one chunk being
differentiated, the data held) exceeds ``GIF_MAX_MEMORY_BYTES`` fails at once with
``memory_budget_exceeded`` and a message naming what to change, instead of being killed by the
operating system's OOM killer half-way.
"""

from __future__ import annotations

from typing import Any

import gif.memory
from gif.method_choice import most_hessian_samples
from jobs.specs import ScoresJob, SelfInfluenceJob, Spec

from .execute import edit_config, scores_config, self_influence_config
from .loading import Loaded


def check_job_fits(spec: Spec, loaded: Loaded, budget: int) -> dict[str, Any]:
    """The job's estimate (for its provenance); raises :class:`gif.errors.MemoryBudgetError`
    when it exceeds ``budget`` bytes (0: no check)."""
    inputs, labels = loaded.train
    n = int(labels.shape[0])
    if isinstance(spec, ScoresJob | SelfInfluenceJob):
        solve = scores_config(spec) if isinstance(spec, ScoresJob) else self_influence_config(spec)
        samples, chunk, per_chunk = n, solve.chunk_size, solve.memory_budget
    else:
        edit = edit_config(spec)
        samples = min(n, most_hessian_samples(edit, spec.type))
        chunk, per_chunk = edit.chunk_size, edit.memory_budget
    estimate = gif.memory.estimate(loaded.model, inputs, samples, chunk_size=chunk, memory_budget=per_chunk)
    if budget > 0:
        gif.memory.check_fits(estimate, budget)
    return estimate.as_dict()
